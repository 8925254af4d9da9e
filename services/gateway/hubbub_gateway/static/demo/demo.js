// The demo page of `hubbub dev` (hubbub_gateway/demo.py). Tokens come from the gateway's
// dev-only /demo endpoints: the page never holds the access key.
"use strict";

const HUB = "chat";
const $ = (id) => document.getElementById(id);
let connection = null;
const joined = [];

async function post(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await response.text();
  const answer = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(`${response.status} ${answer.code || ""}: ${answer.message || text}`);
  return answer;
}

function show(text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text; // text, never markup
  $("messages").prepend(item);
}

function setState(state) {
  document.body.dataset.state = state;
  $("status").textContent = state;
  $("join").disabled = state !== "connected";
}

async function connect() {
  const user = $("user").value.trim();
  if (!user) { show("type a user name first", "system"); return; }
  if (connection) await connection.stop();
  connection = new signalR.HubConnectionBuilder()
    .withUrl(`/hubs/${HUB}`, {
      // A fresh token at every (re)connect.
      accessTokenFactory: async () => (await post("/demo/token", { user })).token,
    })
    .withAutomaticReconnect()
    .build();
  connection.on("newMessage", (...args) => {
    show(args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" "), "message");
  });
  connection.onreconnecting(() => setState("reconnecting"));
  connection.onreconnected(() => setState("connected"));
  connection.onclose(() => setState("disconnected"));
  setState("connecting");
  try {
    await connection.start();
  } catch (err) {
    setState("disconnected");
    show(`connect failed: ${err.message}`, "system");
    return;
  }
  document.body.dataset.user = user;
  setState("connected");
  show(`connected as ${user} (connection ${connection.connectionId})`, "system");
}

async function join() {
  const group = $("group").value.trim();
  if (!group || !connection) return;
  try {
    await connection.invoke("JoinGroup", group);
  } catch (err) {
    show(`join failed: ${err.message}`, "system");
    return;
  }
  if (!joined.includes(group)) joined.push(group);
  document.body.dataset.groups = joined.join(",");
  $("groups").textContent = `in: ${joined.join(", ")}`;
  show(`joined group ${group}`, "system");
}

async function send() {
  const to = $("to").value;
  const name = $("to-name").value.trim();
  const text = $("text").value;
  const base = `/api/hubs/${HUB}`;
  const path = to === "all" ? `${base}/:send`
    : `${base}/${to === "user" ? "users" : "groups"}/${encodeURIComponent(name)}/:send`;
  try {
    // A token for exactly this URL (aud = the request URL), then the REST call itself.
    const { token } = await post("/demo/rest-token", { path });
    const { messageId } = await post(path, { target: "newMessage", arguments: [text] }, token);
    $("sent").textContent = `accepted: ${messageId}`;
  } catch (err) {
    $("sent").textContent = `refused: ${err.message}`;
  }
}

$("connect").addEventListener("click", connect);
$("join").addEventListener("click", join);
$("send").addEventListener("click", send);
$("user").addEventListener("keydown", (e) => { if (e.key === "Enter") connect(); });
