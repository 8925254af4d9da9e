// Drives the official @microsoft/signalr client for the Python tests.
// stdout: one JSON event per line. stdin: one JSON command per line.
import * as signalR from "@microsoft/signalr";
import readline from "node:readline";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const flag = (name) => args.includes(name);
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const token = opt("--token");
const options = {};
if (token) options.accessTokenFactory = () => token;
if (flag("--skip-negotiation")) {
  options.skipNegotiation = true;
  options.transport = signalR.HttpTransportType.WebSockets;
}
let builder = new signalR.HubConnectionBuilder()
  .withUrl(opt("--url"), options)
  .configureLogging(signalR.LogLevel.Warning);
if (flag("--reconnect")) builder = builder.withAutomaticReconnect([0, 200, 500, 1000, 2000]);
const connection = builder.build();

for (const target of (opt("--on") || "newMessage").split(",")) {
  connection.on(target, (...a) => emit({ event: "message", target, args: a }));
}
connection.onclose((err) => emit({ event: "closed", error: err ? String(err) : null }));
connection.onreconnecting((err) => emit({ event: "reconnecting", error: err ? String(err) : null }));
connection.onreconnected((id) => emit({ event: "reconnected", connectionId: id }));

try {
  await connection.start();
  emit({ event: "connected", connectionId: connection.connectionId });
} catch (err) {
  emit({ event: "start_failed", message: String(err && err.message ? err.message : err) });
  process.exit(2);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "invoke") {
    try {
      const result = await connection.invoke(cmd.method, ...(cmd.args || []));
      emit({ event: "result", id: cmd.id, result: result ?? null });
    } catch (err) {
      emit({ event: "error", id: cmd.id, message: String(err.message) });
    }
  } else if (cmd.cmd === "id") {
    emit({ event: "id", connectionId: connection.connectionId });
  } else if (cmd.cmd === "stop") {
    await connection.stop();
    emit({ event: "stopped" });
    process.exit(0);
  }
});
rl.on("close", async () => {
  await connection.stop();
  process.exit(0);
});
