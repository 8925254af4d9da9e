"""One message, one trace: publisher -> gateway REST -> stream -> worker -> inbox -> sockets,
exported over OTLP/HTTP by real processes to a real receiver."""

from __future__ import annotations

import itertools

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_trace_id

from hubbub.sdk.client import ServiceAuth
from hubbub.telemetry import traceparent_of
from hubbub.upstream import Call, Upstream
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token


async def test_one_trace_across_two_gateways_and_a_worker(deployment: Deployment) -> None:
    receiver = OtlpReceiver().start()
    try:
        deployment.extra_env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        ingest = await deployment.start_gateway(OTEL_SERVICE_NAME="hubbub-gateway")
        edge = await deployment.start_gateway(OTEL_SERVICE_NAME="hubbub-gateway")
        deployment.start_worker(OTEL_SERVICE_NAME="hubbub-fanout")
        deployment.start_worker(OTEL_SERVICE_NAME="hubbub-fanout")
        a = await RawClient.connect(edge.url, token=client_token("tina"))
        b = await RawClient.connect(edge.url, token=client_token("tom"))

        # The caller starts the trace, as an instrumented internal service would.
        provider = TracerProvider(resource=Resource.create({"service.name": "publisher"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
        )
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("notify everyone", kind=SpanKind.CLIENT) as root:
            trace_id = format_trace_id(root.get_span_context().trace_id)
            async with httpx.AsyncClient(auth=ServiceAuth(ACCESS_KEY)) as http:
                r = await http.post(
                    f"{ingest.url}/api/hubs/chat/:send",
                    json={"target": "news", "arguments": ["traced"]},
                    headers={"traceparent": traceparent_of(root) or ""},
                )
        assert r.status_code == 202
        provider.shutdown()
        assert (await a.recv())["arguments"] == ["traced"]
        assert (await b.recv())["arguments"] == ["traced"]

        def chain(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
            path = [span]
            while path[-1].parent_id in by_id:
                path.append(by_id[path[-1].parent_id])
            return path[::-1]

        async def complete() -> list[ReceivedSpan] | None:
            # Each process exports on its own schedule: wait until both delivery spans are in
            # and the busy one's ancestry reaches the caller's root span.
            spans = receiver.trace(trace_id)
            by_id = {s.span_id: s for s in spans}
            delivered = [s for s in spans if s.service == "hubbub-gateway" and s.kind == 5]
            if len(delivered) != 2:
                return None
            busy = [s for s in delivered if s.attributes.get("hubbub.recipients") == 2]
            rooted = busy and chain(busy[0], by_id)[0].parent_id == ""
            return spans if rooted else None

        spans = await eventually(complete, timeout=15)
        by_id = {s.span_id: s for s in spans}

        # A broadcast goes through the feed every gateway reads: each gateway has a delivery
        # span; the one holding both clients wrote to 2 sockets.
        delivers = [s for s in spans if s.service == "hubbub-gateway" and s.kind == 5]
        assert sorted(int(s.attributes["hubbub.recipients"]) for s in delivers) == [0, 2]  # type: ignore[call-overload]
        deliver = next(s for s in delivers if s.attributes["hubbub.recipients"] == 2)
        path = chain(deliver, by_id)
        assert [(s.service, s.kind) for s in path] == [
            ("publisher", 3),  # CLIENT
            ("hubbub-gateway", 2),  # SERVER: the REST handler
            ("hubbub-gateway", 4),  # PRODUCER: append to the publish stream
            ("hubbub-fanout", 5),  # CONSUMER: the worker routes it
            ("hubbub-fanout", 4),  # PRODUCER: the delivery to the broadcast feed
            ("hubbub-gateway", 5),  # CONSUMER: the gateway writes to its sockets
        ], [(s.service, s.name) for s in path]
        assert {s.service for s in spans} == {"publisher", "hubbub-gateway", "hubbub-fanout"}
        assert path[1].name == "POST /api/hubs/{hub}/:send"
        assert path[3].attributes["messaging.system"] == "redis"
        for parent, child in itertools.pairwise(path):
            assert child.start >= parent.start - 5_000_000  # clocks of one machine, 5 ms slack
        print("\ntrace " + trace_id + "\n" + "\n".join(
            f"  {s.service:15} {s.name:45} {(s.end - s.start) / 1e6:8.2f} ms" for s in path
        ))  # fmt: skip
    finally:
        receiver.stop()


async def test_an_invocation_continues_the_connections_trace_to_the_handler_and_its_sends(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way back, one trace: connect span -> invoke (gateway) -> handle (SDK service) ->
    the send the handler made -> worker -> delivery (gateway)."""
    receiver = OtlpReceiver().start()
    try:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        deployment.extra_env.update(otel)
        gateway = await deployment.start_gateway(OTEL_SERVICE_NAME="hubbub-gateway")
        deployment.start_worker(OTEL_SERVICE_NAME="hubbub-fanout")
        for name, value in otel.items():  # the SDK service runs in this process
            monkeypatch.setenv(name, value)
        app = Upstream(
            deployment.service_settings(),
            name="tracer",
        )
        chat = app.hub("chat")

        @chat.on("shout")
        async def shout(call: Call, text: str) -> str:
            await chat.send_to_all("shouted", [text])
            return "ok"

        async with app:
            client = await RawClient.connect(gateway.url, token=client_token("tracy"))
            await deployment.upstream_services_seen()
            await client.send({"type": 1, "invocationId": "1", "target": "shout",
                               "arguments": ["hey"]})  # fmt: skip
            got = [await client.recv(), await client.recv()]
            assert {m["type"] for m in got} == {1, 3}, got
            app.stop()
        await client.close()

        def named(spans: list[ReceivedSpan], prefix: str) -> ReceivedSpan | None:
            return next((s for s in spans if s.name.startswith(prefix)), None)

        async def complete() -> list[ReceivedSpan] | None:
            for span in receiver.spans:
                if span.name == "invoke shout":
                    spans = receiver.trace(span.trace_id)
                    kinds = [s for s in spans if s.service == "hubbub-gateway" and s.kind == 5]
                    if named(spans, "connect") and named(spans, "handle shout") and kinds:
                        return spans
            return None

        spans = await eventually(complete, timeout=15)
        by_id = {s.span_id: s for s in spans}
        connect, invoke = named(spans, "connect chat"), named(spans, "invoke shout")
        handle = named(spans, "handle shout")
        assert connect and invoke and handle
        assert invoke.parent_id == connect.span_id
        assert handle.parent_id == invoke.span_id
        assert handle.service == "hubbub-upstream-tracer"
        # The handler's send: the worker's process span, then the gateway's delivery.
        process = next(s for s in spans if s.service == "hubbub-fanout" and s.kind == 5)
        assert process.parent_id == handle.span_id
        delivered = [s for s in spans if s.service == "hubbub-gateway" and s.kind == 5]
        ancestry = {by_id[d.parent_id].parent_id for d in delivered if d.parent_id in by_id}
        assert process.span_id in ancestry, [(s.name, s.service) for s in spans]
    finally:
        receiver.stop()
