"""Health: the worker's probes, ``/livez`` and ``/readyz``, served beside ``/metrics``.

A worker is *ready* while its loop completes turns against Redis: a turn reads (blocking at
most a lease interval) and routes, so in a healthy worker one ends every second or so. No
turn completed for :attr:`Health.ready_within` seconds (Redis down or frozen, a consumer group
missing, routing failing) and the worker is not ready: it cannot route, whatever the reason.
It is *live* while its loop still starts turns (a wedged event loop is not); Kubernetes
restarts a worker that is not live, and alerts on one that stays unready.

The probes and ``/metrics`` are one WSGI app on prometheus-client's threaded server, so they
answer even while the event loop is busy; they only read two timestamps the loop writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from hubbub.settings import Settings

log = logging.getLogger("hubbub.fanout")

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    """Probes come every few seconds: no access line for each."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Health:
    """Timestamps of the supervisor's loop, and what they mean for the probes."""

    def __init__(
        self, ready_within: float, live_within: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ready_within = ready_within
        self.live_within = live_within
        self.clock = clock
        self.started = clock()
        self.last_turn_started = self.started
        self.last_turn_done: float | None = None  # never: not ready until the first turn
        self.error: str | None = None
        self._was_ready = False

    @classmethod
    def for_settings(cls, settings: Settings) -> Health:
        """Ready: a turn done within two lease intervals (a healthy read returns within one),
        and at least 2 s. Live: a turn started within the Redis timeout plus the longest
        backoff and a margin (a turn stuck on a frozen Redis ends by the timeout)."""
        return cls(
            ready_within=max(2.0, 2 * settings.lease_interval),
            live_within=max(30.0, 3 * settings.redis_timeout + 10),
        )

    def turn_started(self) -> None:
        self.last_turn_started = self.clock()

    def turn_done(self) -> None:
        self.last_turn_done = self.clock()
        self.error = None
        if not self._was_ready:
            self._was_ready = True
            log.info("ready: routing")

    def turn_failed(self, error: str) -> None:
        self.error = error

    def ready(self) -> tuple[bool, dict[str, object]]:
        now = self.clock()
        done = self.last_turn_done
        ok = done is not None and now - done <= self.ready_within
        body: dict[str, object] = {
            "status": "ready" if ok else "not ready",
            "seconds_since_last_turn": None if done is None else round(now - done, 3),
        }
        if self.error:
            body["error"] = self.error
        if not ok and self._was_ready:
            self._was_ready = False  # one line per change, whoever notices it first
            log.warning(
                "not ready: no routing turn completed for %.1f s (%s)",
                now - (done or self.started),
                self.error or "no error yet: Redis not answering?",
            )
        return ok, body

    def live(self) -> tuple[bool, dict[str, object]]:
        idle = self.clock() - self.last_turn_started
        ok = idle <= self.live_within
        return ok, {"status": "live" if ok else "stuck", "seconds_since_turn_started": idle}


def probes_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    """``/livez`` and ``/readyz`` (small JSON bodies, 200 or 503; HEAD: no body), everything
    else is ``/metrics``."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok, body = health.live() if path == "/livez" else health.ready()
            payload = orjson.dumps(body)
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            # HEAD: the headers alone (wsgiref would write the body too).
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [payload]
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app


def serve_probes(
    host: str, port: int, registry: CollectorRegistry, health: Health
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the probes and ``/metrics`` in a daemon thread (raises OSError if the port is
    taken); ``server.shutdown()`` stops it."""
    server = make_server(
        host, port, probes_app(registry, health), ThreadingWSGIServer, _QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="probes", daemon=True)
    thread.start()
    return server, thread
