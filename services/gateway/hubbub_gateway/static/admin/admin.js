// Hubbub admin console: polls this gateway's /api/admin endpoints with a service token
// whose audience is <origin>/api/admin. Everything is drawn with textContent: names come
// from clients and are never read as HTML.
"use strict";

const KEY = "hubbub.adminToken";
const AUDIENCE = location.origin + "/api/admin";
let token = sessionStorage.getItem(KEY);
let timers = [];
let search = null; // {hub, kind, prefix, next}

const $ = (id) => document.getElementById(id);

function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message || "";
}

function when(seconds) {
  const ago = Date.now() / 1000 - seconds;
  return ago < 1 ? "now" : ago < 120 ? `${ago.toFixed(0)} s ago` : new Date(seconds * 1000).toLocaleString();
}

function row(cells, attributes) {
  const tr = document.createElement("tr");
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") tr.className = value; else tr.dataset[key] = value;
  }
  for (const cell of cells) {
    const td = document.createElement("td");
    const text = cell === null || cell === undefined ? "-" : String(cell);
    if (typeof cell === "number") td.className = "num";
    td.textContent = text;
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows) {
  $(id).replaceChildren(...rows);
}

class Refused extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) {
    forget((body && body.message) || "token refused");
    throw new Refused();
  }
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${(body && body.message) || ""}`);
  }
  return body;
}

function drawCluster(data) {
  $("this-gateway").textContent = data.gateway;
  let total = 0, live = 0;
  fill("gateways", data.gateways.map((g) => {
    if (g.live) { live += 1; total += g.connections || 0; }
    const state = !g.live ? "no heartbeat" : g.draining ? "draining" : "live";
    const cls = !g.live ? "down" : g.draining ? "draining" : "";
    const name = g.id === data.gateway ? `${g.id} (this one)` : g.id;
    return row([name, g.connections, state, when(g.heartbeat)], { gateway: g.id, class: cls });
  }));
  $("connections-total").textContent = String(total);
  $("gateways-live").textContent = String(live);
  fill("workers", data.workers.map((w) => row(
    [w.name, w.partitions.join(", ") || "none", w.live ? "live" : "no heartbeat", when(w.heartbeat)],
    { worker: w.name, class: w.live ? "" : "down" })));
  let lag = 0, pending = 0;
  fill("partitions", data.partitions.map((p) => {
    lag += p.lag; pending += p.pending;
    return row([p.partition, p.worker || "(no lease)", p.lag, p.pending], { partition: String(p.partition) });
  }));
  $("total-lag").textContent = String(lag);
  $("total-pending").textContent = String(pending);
}

function drawHubs(data) {
  fill("hubs", data.items.map((h) => {
    // Past the count's budget, groups and users are lower bounds.
    const count = (n) => (n === undefined ? null : h.complete === false ? `≥ ${n}` : n);
    return row([h.name, h.connections, count(h.groups), count(h.users)], { hub: h.name });
  }));
  $("hubs-note").textContent = data.truncated ? "More hubs exist than are listed here." : "";
}

function drawRefusals(data) {
  fill("refusals", data.items.map((r) => row(
    [new Date(r.time * 1000).toLocaleTimeString(), r.status, r.code, r.path, r.message])));
}

async function poll(what) {
  try {
    if (what === "fast") {
      drawCluster(await api("/api/admin/cluster"));
      drawRefusals(await api("/api/admin/refusals"));
    } else {
      drawHubs(await api("/api/admin/hubs"));
    }
    setState("ok", "updated " + new Date().toLocaleTimeString());
  } catch (error) {
    if (!(error instanceof Refused)) setState("error", String(error.message || error));
  }
}

const HEADS = {
  connections: ["connection", "user", "gateway"],
  users: ["user"],
  groups: ["group", "connections"],
};

async function searchPage(more) {
  const s = search;
  const query = new URLSearchParams({ prefix: s.prefix, limit: "50" });
  if (more && s.next) query.set("cursor", s.next);
  try {
    const path = `/api/admin/hubs/${encodeURIComponent(s.hub)}/${s.kind}?${query}`;
    const page = await api(path);
    const rows = page.items.map((item) =>
      s.kind === "connections" ? row([item.id, item.user, item.gateway])
        : s.kind === "groups" ? row([item.name, item.connections]) : row([item]));
    if (more) $("results").append(...rows); else $("results").replaceChildren(...rows);
    s.next = page.next;
    $("more").hidden = !page.next;
  } catch (error) {
    if (!(error instanceof Refused)) setState("error", String(error.message || error));
  }
}

function start() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("forget").hidden = false;
  setState("loading", "loading...");
  poll("fast");
  poll("slow");
  timers = [setInterval(() => poll("fast"), 2000), setInterval(() => poll("slow"), 10000)];
}

function forget(message) {
  timers.forEach(clearInterval);
  timers = [];
  token = null;
  sessionStorage.removeItem(KEY);
  $("console").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  setState("need-token", message || "");
}

document.addEventListener("DOMContentLoaded", () => {
  $("audience").textContent = AUDIENCE;
  $("command").textContent =
    `.venv/bin/hubbub token --access-key "$HUBBUB_ACCESS_KEY" --audience ${AUDIENCE} --minutes 60`;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(KEY, token);
    start();
  });
  $("forget").addEventListener("click", () => forget("token forgotten"));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search = { hub: $("search-hub").value.trim(), kind: $("search-kind").value,
               prefix: $("search-prefix").value, next: null };
    const head = document.createElement("tr");
    for (const name of HEADS[search.kind]) {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    }
    $("results-head").replaceChildren(head);
    searchPage(false);
  });
  $("more").addEventListener("click", () => searchPage(true));
  if (token) start(); else forget("");
});
