// The Node peer's publisher: @socket.io/redis-emitter, driven by one Python publisher process
// (bench/publishers.py, NodePublisher) over stdin/stdout, one JSON object a line.
//
//     node bench/peer_node/publisher.js --redis-url redis://127.0.0.1:6379/0
//
// Python chooses every recipient (bench/workloads.py, the same draws as for the other
// systems) and sends this process its whole share of a phase *before* the phase starts:
//
//     {"cmd": "publish", "start_at": <epoch s>, "rate": <msg/s>, "pad": <n>,
//      "messages": [[k, room or null (to all), seq, check key or null, check value], ...]}
//
// so that during the phase this process does all the publishing work (its CPU is what the
// benchmark counts as publisher CPU) and the Python process only waits. Message k is due at
// start_at + k / rate; its payload is {"s": seq, <check key>: <value>, "p": padding, "t": send
// time}, "t" in seconds since the epoch taken just before the emit, as the Python publishers
// take time.time(). The emitter does not return Redis's answer, so the Redis client it gets is
// a thin wrapper that keeps each PUBLISH's promise: the publish call's time (and its failure)
// is up to Redis's reply, as for python-socketio's awaited AsyncRedisManager.emit().
// The answer, one line: {"published", "failed", "failed_ks", "errors", "max_lag", "started",
// "ended", "request_latencies": [s, ...], "cpu_seconds"}. {"cmd": "stop"} ends the process.
"use strict";

const readline = require("node:readline");
const { parseArgs } = require("node:util");
const { performance } = require("node:perf_hooks");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

const TARGET_METHOD = "newMessage"; // bench/common.py TARGET_METHOD

// Wall-clock seconds with sub-millisecond resolution: performance.now() (monotonic, µs)
// anchored to Date.now() (ms) at the instant Date.now() ticks, re-anchored before each phase so
// that the monotonic clock cannot drift from the wall clock the load clients read.
let anchorMs = 0;
function anchorClock() {
  const first = Date.now();
  let now = first;
  while (now === first) {
    now = Date.now();
  }
  anchorMs = now - performance.now();
}
function wallSeconds() {
  return (anchorMs + performance.now()) / 1000;
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

function cpuSeconds() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

async function publishShare(client, emitter, body) {
  anchorClock();
  const padding = "x".repeat(body.pad);
  const result = {
    published: 0,
    failed: 0,
    failed_ks: [],
    errors: {},
    max_lag: 0,
    started: 0,
    ended: 0,
    request_latencies: [],
    cpu_seconds: 0,
  };
  const pending = [];
  const cpuStart = cpuSeconds();
  for (const [k, room, seq, checkKey, checkValue] of body.messages) {
    const due = body.start_at + k / body.rate;
    const delay = due - wallSeconds();
    if (delay > 0) {
      await sleep(delay);
    }
    if (!result.started) {
      result.started = wallSeconds();
    }
    result.max_lag = Math.max(result.max_lag, wallSeconds() - due);
    const payload = { s: seq };
    if (checkKey !== null) {
      payload[checkKey] = checkValue;
    }
    payload.p = padding;
    const sent = wallSeconds();
    payload.t = sent;
    let reply = null;
    client.onPublish = (promise) => {
      reply = promise;
    };
    try {
      (room === null ? emitter : emitter.to(room)).emit(TARGET_METHOD, payload);
    } catch (err) {
      reply = Promise.reject(err);
    }
    pending.push(
      reply.then(
        () => {
          result.request_latencies.push(wallSeconds() - sent);
          result.published += 1;
        },
        (err) => {
          result.failed += 1;
          result.failed_ks.push(k);
          const key = String(err).slice(0, 160);
          result.errors[key] = (result.errors[key] || 0) + 1;
        },
      ),
    );
  }
  await Promise.all(pending);
  result.ended = wallSeconds();
  result.cpu_seconds = cpuSeconds() - cpuStart;
  return result;
}

async function main() {
  const { values } = parseArgs({ options: { "redis-url": { type: "string" } } });
  if (!values["redis-url"]) {
    throw new Error("usage: publisher.js --redis-url URL");
  }
  const redis = createClient({ url: values["redis-url"] });
  redis.on("error", (err) => console.error("ERROR redis:", err));
  await redis.connect();
  // What the emitter sees as its Redis client: PUBLISH, with the reply's promise kept.
  const client = {
    onPublish: null,
    publish(channel, message) {
      const promise = redis.publish(channel, message);
      if (this.onPublish !== null) {
        this.onPublish(promise);
        this.onPublish = null;
      }
      return promise;
    },
  };
  const emitter = new Emitter(client);
  const write = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
  write({ ready: true });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const body = JSON.parse(line);
    if (body.cmd === "publish") {
      write(await publishShare(client, emitter, body));
    } else if (body.cmd === "stop") {
      break;
    }
  }
  await redis.quit();
}

main().catch((err) => {
  console.error("ERROR", err);
  process.exit(1);
});
