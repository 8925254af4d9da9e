// The example chat's page: plain JavaScript on the official @microsoft/signalr browser build
// (window.signalR). The page only invokes hub methods; the example service handles them
// (examples/chat/service.py) and answers with sends: message, system, online.
"use strict";

const $ = (id) => document.getElementById(id);
let connection = null;
let room = null; // the room this connection joined, if any

function line(kind, parts) {
  const item = document.createElement("li");
  item.className = kind;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text; // never innerHTML: messages are other people's text
    item.append(span);
  }
  const list = $("messages");
  list.append(item);
  list.scrollTop = list.scrollHeight;
  return item;
}

function showError(err) {
  line("error", [[null, String(err && err.message ? err.message : err)]]);
}

function showOnline(users) {
  $("online").replaceChildren(
    ...users.map((user) => {
      const item = document.createElement("li");
      item.textContent = user;
      item.dataset.user = user;
      return item;
    }),
  );
}

function setRoom(name) {
  room = name;
  document.body.dataset.room = name || "";
  $("current-room").textContent = name ? `in #${name}` : "";
  $("text").disabled = $("send-button").disabled = !name;
}

async function token(user, url) {
  const response = await fetch("/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(url ? { user, url } : { user }),
  });
  if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
  return response.json();
}

async function connect(user) {
  const first = await token(user);
  let fresh = first.token;
  connection = new signalR.HubConnectionBuilder()
    // The token travels as access_token on the WebSocket URL; a reconnect asks for a new one
    // (for the same gateway), so an expired token never stops the page.
    .withUrl(first.url, {
      accessTokenFactory: async () => {
        if (fresh) {
          const t = fresh;
          fresh = null;
          return t;
        }
        return (await token(user, first.url)).token;
      },
    })
    .withAutomaticReconnect()
    .configureLogging(signalR.LogLevel.Warning)
    .build();

  connection.on("message", (messageRoom, from, text) => {
    const item = line("message", [["user", from], [null, `: ${text}`]]);
    item.dataset.user = from;
    item.dataset.room = messageRoom;
  });
  connection.on("system", (systemRoom, text) => {
    const item = line("system", [[null, text]]);
    item.dataset.room = systemRoom;
  });
  connection.on("online", showOnline);

  connection.onreconnecting(() => {
    document.body.dataset.state = "reconnecting";
    $("status").textContent = `Reconnecting as ${user}...`;
  });
  connection.onreconnected(async () => {
    // A new connection: its groups are gone, so join the room again.
    document.body.dataset.state = "connected";
    $("status").textContent = `Connected as ${user} via ${first.url}`;
    try {
      if (room) setRoom(await connection.invoke("joinRoom", room));
      showOnline(await connection.invoke("online"));
    } catch (err) {
      showError(err);
    }
  });
  connection.onclose((err) => {
    document.body.dataset.state = "closed";
    $("status").textContent = `Disconnected${err ? `: ${err.message}` : ""}. Reload to reconnect.`;
    setRoom(null);
    $("join-button").disabled = true;
  });

  await connection.start();
  document.body.dataset.user = user;
  document.body.dataset.gateway = first.url;
  $("status").textContent = `Connected as ${user} via ${first.url}`;
  $("join-button").disabled = false;
  try {
    showOnline(await connection.invoke("online"));
  } catch (err) {
    showError(err); // e.g. the example service is not running: the gateway says so at once
  }
  document.body.dataset.state = "connected";
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("connect").disabled = true;
  try {
    await connect($("name").value.trim());
  } catch (err) {
    $("connect").disabled = false;
    $("status").textContent = `Could not connect: ${err.message || err}`;
  }
});

$("join").addEventListener("submit", async (event) => {
  event.preventDefault();
  const next = $("room").value.trim();
  if (!connection || next === room) return;
  $("join-button").disabled = true;
  try {
    if (room) {
      await connection.invoke("leaveRoom", room);
      setRoom(null);
    }
    setRoom(await connection.invoke("joinRoom", next));
  } catch (err) {
    showError(err);
  } finally {
    $("join-button").disabled = false;
  }
});

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !room) return;
  try {
    await connection.invoke("sendMessage", room, text);
    $("text").value = "";
  } catch (err) {
    showError(err);
  }
});
