"""Hubbub benchmark, optionally side by side with python-socketio and/or Node Socket.IO in the
same run.

    bench/run                                     # everything, 3 systems, into bench/RESULTS.md
    .venv/bin/python -m bench --compare --all [--idle 3000] [--results bench/RESULTS.md]
    .venv/bin/python -m bench --peer both --preset fanout-1k   # issue 14's W2 and W3
    .venv/bin/python -m bench --workload broadcast --rate 50 --seconds 10   # Hubbub only
    .venv/bin/python -m bench.ingest              # REST ingest on one gateway (see bench/ingest.py)
    .venv/bin/python -m bench.send_cpu            # one send through the ASGI app, in process

Modules: :mod:`bench.targets` (the systems under test: Hubbub on the shared launcher,
:mod:`hubbub.dev.launcher`, and the peers), :mod:`bench.clients` (load-client
processes), :mod:`bench.publishers` (publisher processes), :mod:`bench.workloads` (W1-W3 and the
ramp), :mod:`bench.phases` (sessions, phases, W4), :mod:`bench.procstat` (CPU and memory from
``/proc``), :mod:`bench.report` (markdown and JSON), ``python -m bench`` (:mod:`bench.__main__`).

What runs (every piece a separate OS process), for each system; ``--compare`` runs Hubbub and
the ``--peer`` (``socketio``, the default; ``node``; or ``both``, which ``bench/run`` uses). Every
system is up at once, and each phase runs on one system after the other (alternating the
order), so that the machine's other load weighs on all alike:

- **hubbub**: one ``redis-server`` (:class:`hubbub.dev.embedded.RedisProcess`), two gateways
  (``python -m hubbub_gateway.main``) and two fan-out workers, started by
  :class:`hubbub.dev.launcher.LocalDeployment` as ``hubbub dev`` and the tests start them.
  ``--hubbub-publish`` says how messages are published: ``direct`` (the default with
  ``--compare``) appends them straight to the publish stream with
  ``hubbub.sdk.publisher.Publisher``, the counterpart of the peer's write-only
  ``AsyncRedisManager``; ``rest`` (the default otherwise) sends them through the REST API,
  spread over both gateways. With ``--all`` and ``direct``, one extra short phase, **W3 via
  REST**, repeats W3 for Hubbub alone through the REST API, so the REST ingest cost stays
  visible.
  ``--redis cluster:N`` runs Hubbub on a Redis Cluster of N masters (no replicas;
  :class:`hubbub.dev.topologies.RedisClusterProcesses`, ``HUBBUB_REDIS_MODE=cluster`` for the
  gateways, workers and direct publishers) instead of one redis-server; repeated (e.g.
  ``--redis standalone --redis cluster:1 --redis cluster:3``), one Hubbub deployment per value,
  phases in turn, like ``--client-protocol``. The server CPU then counts every master
  (``redis-m1`` ... ``redis-mN``, in slot order), in total and per master.
- **socketio** (the peer): its own ``redis-server`` (the same binary), two uvicorn processes
  serving ``socketio.ASGIApp(socketio.AsyncServer(client_manager=AsyncRedisManager))``
  (``bench/peer_socketio.py``); messages are injected by a write-only
  ``AsyncRedisManager(url, write_only=True)`` emitting to all, to a room, or to a per-user room.
- **node** (the second peer): its own ``redis-server``, two Node processes running Socket.IO 4
  with ``@socket.io/redis-adapter`` (``bench/peer_node/server.js``: the same rooms, ``echo``
  and ``/bench/connected`` as ``peer_socketio.py``; exact versions in its committed
  ``package-lock.json``, installed by ``npm ci``, which ``bench/run`` runs when
  ``node_modules`` is missing); messages are injected by ``@socket.io/redis-emitter`` in a Node
  process (``bench/peer_node/publisher.js``) that each publisher process drives
  (:class:`bench.publishers.NodePublisher`).
- ``--client-procs`` load-client processes, each holding its share of raw WebSocket connections
  (the ``websockets`` library, no polling; ``--client-impl``: see :mod:`bench.clients`), spread
  evenly over both server processes. For Hubbub
  they speak SignalR JSON (``--client-protocol json``, the default), JSON with stateful
  reconnect (``stateful``: numbered messages, an Ack at most once a second as the JS client
  sends them) or MessagePack (``messagepack``); a mix such as ``json+messagepack`` splits the
  load-client processes between them, and the option repeated runs one Hubbub deployment per
  protocol, phases in turn (see :mod:`bench.clients`). For the peers raw Engine.IO v4 /
  Socket.IO v5 (``0{...}`` → ``40``, pings ``2`` → ``3``, messages ``42["newMessage",payload]``).
- ``--publisher-procs`` publisher processes, which share each publish schedule (message ``k``
  of a phase is due at ``start + k / rate`` and sent by process ``k % procs``), each with a few
  requests in flight, so that one process is not the bottleneck (the Node peer's: each hands its
  share to its Node child before the phase, which then publishes on the same schedule).

Workloads, each a *phase* on the same connections (200 by default): **W1** ``broadcast`` (to
every client), **W2** ``groups`` (to one group of 10; Hubbub joins them through the REST API,
the peers server side on connect from the query string), **W3** ``users`` (to one user, i.e. a
per-user room); ``--preset fanout-1k`` runs W2 and W3 at 500 msg/s with 1,000 clients, issue
14's reference phases. **Ramp** (``--ramp``): for W1, the highest publish rate with zero loss
and p99 < 100 ms, found by doubling then bisecting over short steps; then W1 again at 10 % of
Hubbub's sustainable rate, for the latency target. **W4** ``--idle N``: a fresh start of each
system, N idle connections, and the servers' RSS growth per connection.

Every message carries its publish time (``time.time()``, taken just before the publish call; the
Node publisher reads the same wall clock, to the microsecond) and a sequence number; each client
takes ``receive time - publish time`` for *every* message it gets, and checks it got no
duplicate and nothing meant for someone else. Messages of an earlier phase that arrive late are
counted apart (and the next phase starts only once they stopped coming).

**Server CPU per delivery** = user+system CPU (``/proc/<pid>/stat``) of every server-side process
(Hubbub: gateways, workers, redis-server; python-socketio: the uvicorn processes and
redis-server; Node Socket.IO: the Node server processes and redis-server), from the first
publish until every expected delivery arrived (or the drain timeout), divided by the deliveries
received. The publishers' CPU (``time.process_time()`` of each publisher process, or
``process.cpuUsage()`` of each Node publisher, over its share) is not in it: it has rows of its
own, per delivery and added to the server CPU (issue 14's server CPU counts the publishing
process). The load clients' CPU is reported too: when a client process is near 1.0 CPU-s per
second, it (not the server) is the bottleneck and the latency figures mostly measure it. So is
the CPU the rest of the machine used meanwhile: on a shared machine other jobs skew every
figure, which is why the systems run in the same invocation and the report gives the ratio
Hubbub/peer (for each peer) for every figure.

Other figures: the latency of each message's *first* recipient (the pipeline without the fan-out
burst), the servers' idle CPU with the clients connected, connections still registered after
their clients closed (leaks), warnings and errors in the server logs (kept in a temp dir when
there are any).
"""
