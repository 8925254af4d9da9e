"""Prometheus metrics of one process, in a registry of its own (no global state).

Counters move per message or per batch, never per socket write, so the hot path pays a few
lock-protected additions per message.

A process exports only the metrics of its role (:data:`ROLES`): a worker has no
``hubbub_connections``. The others still exist as attributes (shared code may count on them)
but are not registered, so they are never rendered. Labelled counters start at 0 for the
label values their role knows (:data:`KNOWN_LABELS`), so a dashboard sees a series (and a
rate of 0) before the first drop or the first routed message.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from hubbub.wire.envelopes import Event, Kind

Role = Literal["gateway", "worker", "service", "all"]

# Which metrics (by attribute) each role exports. "service": an upstream service
# (hubbub.upstream.app). "all": every one (tests that drive parts of several roles).
_GATEWAY = {
    "connections", "accepted", "deliveries", "drops", "redis_errors", "upstream_appended",
    "invocation_outcomes", "resumes", "resumed_messages", "stage",
}  # fmt: skip
_UPSTREAM = {"redis_errors", "upstream_handled", "webhook_responses", "webhook_retries"}
_WORKER = {"routed", "lookups", "drops", "stream_lag", "stream_pending", "stage"} | _UPSTREAM
ROLES: dict[str, set[str] | None] = {
    "gateway": _GATEWAY, "worker": _WORKER, "service": _UPSTREAM, "all": None,
}  # fmt: skip

# Label values each role starts at 0, by metric (the values the code counts under).
_KINDS = tuple((kind.label,) for kind in Kind)
_GATEWAY_LABELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "accepted": _KINDS,
    "drops": tuple(
        (reason,)
        for reason in (
            "slow_consumer",
            "resume_overflow",
            "duplicate",
            "stale_epoch",
            "too_many_asked",
            "late_completion",
            "not_transcoded",
        )
    ),
    "redis_errors": tuple(
        (c,) for c in ("heartbeat", "inbox", "reconcile", "resume", "unregister", "upstream")
    ),
    "upstream_appended": tuple((e.name.lower(),) for e in Event),
    "invocation_outcomes": (("answered",), ("timeout",), ("refused",)),
    "resumes": tuple((e,) for e in ("detached", "resumed", "adopted", "refused", "ended")),
    "stage": (("ingest",), ("deliver",)),
}
_UPSTREAM_LABELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "redis_errors": (("upstream",),),
    "webhook_responses": (("timeout",), ("error",)),
}
_WORKER_LABELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "routed": _KINDS,
    "drops": (("malformed",), ("no_recipient",)),
    "redis_errors": (("worker",), ("upstream",)),
    "stage": (("route",),),
    "webhook_responses": _UPSTREAM_LABELS["webhook_responses"],
}
KNOWN_LABELS: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "gateway": _GATEWAY_LABELS,
    "worker": _WORKER_LABELS,
    "service": _UPSTREAM_LABELS,
    "all": {},
}

# Distinct hub label values a process reports; later hubs are counted under "_other", so a
# client that makes up hub names cannot grow /metrics without bound (pin hubs: HUBBUB_HUBS).
MAX_HUB_LABELS = 100

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, role: Role = "all") -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self._hub_labels: set[str] = set()
        # Created unregistered; _register() adds those of the role.
        r = None
        self.connections = Gauge(
            "hubbub_connections", "Open client connections", ["hub"], registry=r
        )
        self.accepted = Counter(
            "hubbub_messages_accepted", "Messages accepted by the REST API", ["kind"], registry=r
        )
        self.deliveries = Counter(
            "hubbub_deliveries", "Frames written to client sockets", registry=r
        )
        self.routed = Counter(
            "hubbub_routed", "Deliveries appended to gateway inboxes by workers", ["kind"],
            registry=r,
        )  # fmt: skip
        self.lookups = Counter(
            "hubbub_route_lookups",
            "Targets a worker looked up in Redis (it knew the others)",
            registry=r,
        )
        self.drops = Counter(
            "hubbub_drops", "Messages or connections dropped, by reason", ["reason"], registry=r
        )
        self.stream_lag = Gauge(
            "hubbub_stream_lag", "Publish entries not yet read by a worker", ["partition"],
            registry=r,
        )  # fmt: skip
        self.stream_pending = Gauge(
            "hubbub_stream_pending", "Publish entries read but not yet acknowledged",
            ["partition"], registry=r,
        )  # fmt: skip
        self.redis_errors = Counter(
            "hubbub_redis_errors", "Redis errors", ["component"], registry=r
        )
        # The way back (client -> service).
        self.upstream_appended = Counter(
            "hubbub_upstream_appended", "Upstream entries appended by gateways", ["event"],
            registry=r,
        )  # fmt: skip
        self.invocation_outcomes = Counter(
            "hubbub_invocations", "Blocking client invocations by how they ended (gateway)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.upstream_handled = Histogram(
            "hubbub_upstream_handled_seconds",
            "Upstream entries handled by a consumer, by event and outcome",
            ["event", "outcome"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.webhook_responses = Counter(
            "hubbub_webhook_responses", "Webhook (HTTP upstream) answers by status code "
            "('timeout', 'error' when none came)", ["status"], registry=r,
        )  # fmt: skip
        self.webhook_retries = Counter(
            "hubbub_webhook_retries", "Webhook requests retried (connection events)", registry=r
        )
        self.resumes = Counter(
            "hubbub_resumes", "Stateful reconnect: transports dropped (detached), re-attaches "
            "here (resumed), adoptions from another gateway (adopted), refusals (refused), "
            "connections that could not resume (ended)", ["event"], registry=r,
        )  # fmt: skip
        self.resumed_messages = Counter(
            "hubbub_resumed_messages", "Messages resent at a re-attach, or read back from "
            "another gateway's inbox at an adoption", registry=r,
        )  # fmt: skip
        self.stage = Histogram(
            "hubbub_stage_seconds", "Time spent per stage of a message's path", ["stage"],
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self._register()

    def _register(self) -> None:
        exported = ROLES[self.role]
        for name, metric in vars(self).items():
            if isinstance(metric, MetricWrapperBase) and (exported is None or name in exported):
                self.registry.register(metric)
        for name, values in KNOWN_LABELS[self.role].items():
            metric = getattr(self, name)
            for labels in values:
                metric.labels(*labels)

    def hub_label(self, hub: str) -> str:
        """``hub`` as a label value: itself for the first :data:`MAX_HUB_LABELS` hubs seen,
        ``_other`` after that (the same answer for a hub every time)."""
        labels = self._hub_labels
        if hub in labels:
            return hub
        if len(labels) < MAX_HUB_LABELS:
            labels.add(hub)
            return hub
        return "_other"

    def render(self) -> bytes:
        return generate_latest(self.registry)
