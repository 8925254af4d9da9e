// Drives the official @microsoft/signalr client, unmodified, for the Python end-to-end tests
// (tests/e2e/nodeclient.py). stdout carries one JSON event per line and nothing else; the
// client's own log (Warning and up) goes to stderr. stdin takes one JSON command per line.
//
//   node client.mjs --url http://127.0.0.1:PORT/hubs/chat [--token JWT] [--skip-negotiation]
//                   [--reconnect] [--transport-header] [--query-token] [--on name1,name2,...]
//                   [--answer name1,name2,...] [--msgpack] [--stateful]
//
// --stateful          withStatefulReconnect(): a dropped transport re-attaches with the same
//                     connection id and the server resends what the client had not acknowledged.
// --transport-header  send the token as a fixed `Authorization: Bearer` header through the
//                     `headers` option instead of accessTokenFactory.
// --answer            handlers (also listened to) that return a value, for client results:
//                     {"echo": args}; one named "fail" throws, one named "hang" never returns.
// --msgpack          the MessagePack hub protocol (@microsoft/signalr-protocol-msgpack)
//                     instead of JSON.
// --query-token       what the browser build does: the token travels as `access_token` on the
//                     WebSocket URL and the upgrade carries no Authorization header. Under Node
//                     the client would otherwise always send the header.
//
// Exit codes: 0 after stop/stdin EOF, 2 when start() fails, 3 when stdout is gone, 64 on usage.
import * as signalR from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { createRequire } from "node:module";
import readline from "node:readline";
import { parseArgs } from "node:util";

const USAGE =
  "usage: node client.mjs --url URL [--token JWT] [--skip-negotiation] [--reconnect] " +
  "[--transport-header] [--query-token] [--on name1,name2,...] [--answer ...] [--msgpack]\n";

let cli;
try {
  cli = parseArgs({
    options: {
      url: { type: "string" },
      token: { type: "string" },
      "skip-negotiation": { type: "boolean", default: false },
      reconnect: { type: "boolean", default: false },
      "transport-header": { type: "boolean", default: false },
      "query-token": { type: "boolean", default: false },
      on: { type: "string", default: "newMessage" },
      answer: { type: "string", default: "" },
      msgpack: { type: "boolean", default: false },
      stateful: { type: "boolean", default: false },
    },
    strict: true,
  }).values;
  if (!cli.url) throw new Error("--url is required");
  if ((cli["transport-header"] || cli["query-token"]) && !cli.token) {
    throw new Error("--transport-header and --query-token need --token");
  }
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}`);
  process.exit(64);
}

// The parent may go away without closing our stdin; never die on an unhandled EPIPE.
process.stdout.on("error", () => process.exit(3));

/** Writes one event line; resolves once it is handed to the pipe, so exiting loses nothing. */
function emit(event) {
  return new Promise((resolve) => {
    process.stdout.write(JSON.stringify(event) + "\n", () => resolve());
  });
}

async function exit(code, event) {
  if (event) await emit(event);
  process.exit(code);
}

const errorText = (err) => (err === undefined || err === null ? null : String(err));
const messageOf = (err) => String(err && err.message !== undefined ? err.message : err);

// Logs only to stderr, whatever the library's console habits are, so stdout stays pure JSON.
const logger = {
  log(level, message) {
    if (level >= signalR.LogLevel.Warning) {
      process.stderr.write(`[${new Date().toISOString()}] ${signalR.LogLevel[level]}: ${message}\n`);
    }
  },
};

const options = {};
if (cli.token && cli["transport-header"]) {
  options.headers = { Authorization: `Bearer ${cli.token}` };
} else if (cli.token) {
  const token = cli.token;
  options.accessTokenFactory = () => token;
}
if (cli["query-token"]) {
  // The `ws` package the client itself loads (resolved from its location, not ours).
  const WebSocket = createRequire(createRequire(import.meta.url).resolve("@microsoft/signalr"))(
    "ws",
  );
  options.WebSocket = class QueryTokenWebSocket extends WebSocket {
    constructor(url, protocols, init = {}) {
      const headers = { ...(init.headers || {}) };
      const auth = headers.Authorization;
      delete headers.Authorization;
      if (typeof auth === "string" && auth.startsWith("Bearer ")) {
        url += (url.includes("?") ? "&" : "?") + `access_token=${encodeURIComponent(auth.slice(7))}`;
      }
      super(url, protocols, { ...init, headers });
    }
  };
}
if (cli["skip-negotiation"]) {
  options.skipNegotiation = true;
  options.transport = signalR.HttpTransportType.WebSockets;
}

let builder = new signalR.HubConnectionBuilder().withUrl(cli.url, options).configureLogging(logger);
if (cli.msgpack) builder = builder.withHubProtocol(new MessagePackHubProtocol());
if (cli.reconnect) builder = builder.withAutomaticReconnect([0, 200, 500, 1000]);
if (cli.stateful) builder = builder.withStatefulReconnect();
const connection = builder.build();

const names = (list) => list.split(",").map((s) => s.trim()).filter(Boolean);
for (const target of names(cli.on)) {
  connection.on(target, (...args) => emit({ event: "message", target, args }));
}
for (const target of names(cli.answer)) {
  connection.on(target, async (...args) => {
    await emit({ event: "message", target, args });
    if (target === "fail") throw new Error("the client refuses");
    if (target === "hang") return new Promise(() => {});
    return { echo: args };
  });
}
connection.onclose((err) => emit({ event: "closed", error: errorText(err) }));
connection.onreconnecting((err) => emit({ event: "reconnecting", error: errorText(err) }));
connection.onreconnected((id) => emit({ event: "reconnected", connectionId: id ?? null }));

// stdin is read from the start so an early EOF is never missed; commands wait for start().
const started = connection.start().then(
  () => emit({ event: "connected", connectionId: connection.connectionId ?? null }),
  (err) => exit(2, { event: "start_failed", message: messageOf(err) }),
);

let stopping = null;
function stop() {
  stopping ??= (async () => {
    try {
      await connection.stop();
    } catch (err) {
      process.stderr.write(`stop() failed: ${messageOf(err)}\n`);
    }
    await exit(0, { event: "stopped" });
  })();
  return stopping;
}

async function handle(line) {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    if (cmd === null || typeof cmd !== "object" || typeof cmd.cmd !== "string") {
      throw new Error('expected an object with a string "cmd"');
    }
  } catch (err) {
    await emit({ event: "bad_command", line, message: messageOf(err) });
    return;
  }
  await started;
  const id = cmd.id ?? null;
  const args = Array.isArray(cmd.args) ? cmd.args : [];
  switch (cmd.cmd) {
    case "invoke":
      try {
        const result = await connection.invoke(cmd.method, ...args);
        await emit({ event: "result", id, result: result ?? null });
      } catch (err) {
        await emit({ event: "error", id, message: messageOf(err) });
      }
      break;
    case "send":
      try {
        await connection.send(cmd.method, ...args);
        await emit({ event: "sent", id });
      } catch (err) {
        await emit({ event: "error", id, message: messageOf(err) });
      }
      break;
    case "state":
      await emit({
        event: "state",
        id,
        state: connection.state,
        connectionId: connection.connectionId ?? null,
      });
      break;
    case "stop":
      await stop();
      break;
    default:
      await emit({ event: "bad_command", line, message: `unknown cmd ${JSON.stringify(cmd.cmd)}` });
  }
}

// Commands still running when stdin ends get a grace period, so `printf ... | node client.mjs`
// sees every reply instead of "Invocation canceled" from the stop that EOF triggers.
const inflight = new Set();
const EOF_GRACE_MS = 5000;

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  const task = handle(line)
    .catch((err) => process.stderr.write(`command failed: ${messageOf(err)}\n`))
    .finally(() => inflight.delete(task));
  inflight.add(task);
});
input.on("close", async () => {
  await started;
  let timer;
  const grace = new Promise((resolve) => {
    timer = setTimeout(resolve, EOF_GRACE_MS);
  });
  await Promise.race([Promise.allSettled([...inflight]), grace]);
  clearTimeout(timer);
  await stop();
});
