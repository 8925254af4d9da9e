// The benchmark's Node peer: one Socket.IO 4 server process with @socket.io/redis-adapter.
//
//     node bench/peer_node/server.js --port 9000 --redis-url redis://127.0.0.1:6379/0
//
// The counterpart of bench/peer_socketio.py, the same in every respect the benchmark sees:
// the adapter's Redis pub/sub carries what @socket.io/redis-emitter (publisher.js) or the other
// server process emits to this one's clients; on connect a client joins, server side, the rooms
// its query string names (group=<g> joins room <g>, user=<u> joins room user:<u>); the `echo`
// event answers its argument as the acknowledgement; GET /bench/connected answers
// {"connected": <clients this process holds on namespace "/">} (the leak check, and the
// readiness probe: it answers only once both Redis connections are up). Default transports,
// so a client may open the WebSocket straight away (transport=websocket), as the load clients
// do; default ping interval (25 s), as python-socketio's.
"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const USER_ROOM = "user:"; // bench/common.py USER_ROOM

async function main() {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      "redis-url": { type: "string" },
    },
  });
  if (!values.port || !values["redis-url"]) {
    throw new Error("usage: server.js --port PORT --redis-url URL [--host HOST]");
  }
  const pubClient = createClient({ url: values["redis-url"] });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => console.error("ERROR redis:", err));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  let io = null;
  const httpServer = http.createServer((req, res) => {
    // Socket.IO answers /socket.io/ itself; every other request lands here.
    if (req.method === "GET" && req.url === "/bench/connected" && io !== null) {
      const body = JSON.stringify({ connected: io.of("/").sockets.size });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(body);
      return;
    }
    res.writeHead(404);
    res.end();
  });
  io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient),
    cors: { origin: "*" },
  });
  io.on("connection", (socket) => {
    const query = new URLSearchParams(socket.request.url.split("?")[1] || "");
    const rooms = [
      ...query.getAll("group"),
      ...query.getAll("user").map((user) => USER_ROOM + user),
    ];
    if (rooms.length) {
      socket.join(rooms);
    }
    // An event with an acknowledgement: the peer of a SignalR invoke() (bench/upstream.py).
    socket.on("echo", (value, ack) => {
      if (typeof ack === "function") {
        ack(value);
      }
    });
  });
  httpServer.listen(Number(values.port), values.host);

  // Disconnect every client, then exit without waiting for the HTTP server's close (which
  // would wait on the TCP connections of clients that are slow to hang up).
  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error("ERROR", err);
  process.exit(1);
});
