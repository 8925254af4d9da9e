"""Tracing: one trace per message, REST handler -> stream -> worker -> inbox -> sockets.

Configured only by the standard ``OTEL_*`` variables (endpoint, service name, sampler). With
no OTLP endpoint set, :func:`setup_tracing` returns ``None`` and every call site skips its
span entirely, so tracing off costs one ``is None`` test per message. The tracer is passed
around explicitly (no global provider is installed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()

# OpenTelemetry messaging semantic conventions.
SYSTEM = "messaging.system"
OPERATION = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
CONSUMER_GROUP = "messaging.consumer.group.name"
BATCH_COUNT = "messaging.batch.message_count"
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


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=_context_of(span))
    return carrier.get("traceparent")


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
