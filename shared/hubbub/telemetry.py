"""Tracing: one trace per message, REST handler -> stream -> worker -> inbox -> sockets.

Configured only by the standard ``OTEL_*`` variables (endpoint, service name, sampler). With
no OTLP endpoint set, :func:`setup_tracing` returns ``None``; call sites open their spans with
:func:`span`, which then hands back one shared no-op context, so one code path serves both and
tracing off costs a function call per message. The tracer is passed around explicitly (no
global provider is installed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

_PROPAGATOR = TraceContextTextMapPropagator()

# OpenTelemetry messaging semantic conventions.
SYSTEM = "messaging.system"
OPERATION = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
CONSUMER_GROUP = "messaging.consumer.group.name"
BODY_SIZE = "messaging.message.body.size"


@dataclass
class Telemetry:
    tracer: Tracer
    provider: TracerProvider

    def shutdown(self) -> None:
        """Flush what is buffered; called when the process stops."""
        self.provider.shutdown()


def setup_tracing(default_service_name: str) -> Telemetry | None:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_*
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Telemetry(provider.get_tracer("hubbub"), provider)


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


def span(
    tracer: Tracer | None,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Attributes = None,
) -> AbstractContextManager[Span | None]:
    """``with span(tracer, ...) as s:`` the current span, or ``None`` when tracing is off (the
    same no-op context every time: nothing is allocated)."""
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes)


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=_context_of(span))
    return carrier.get("traceparent")


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (None outside a recorded trace): a message sent
    from inside a handler continues the trace that caused it."""
    from opentelemetry.trace import get_current_span

    current = get_current_span()
    return traceparent_of(current) if current.get_span_context().is_valid else None


def context_from(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def context_from_headers(headers: Mapping[str, str]) -> Context | None:
    if "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract(dict(headers))


def _context_of(span: Span) -> Context:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)
