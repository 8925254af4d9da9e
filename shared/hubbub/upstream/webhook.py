"""HTTP upstream: what clients do, POSTed to webhooks in Azure SignalR's upstream format.

:class:`Webhooks` is the handler of an :class:`~.consumer.UpstreamConsumer` (consumer group
``HUBBUB_UPSTREAM_GROUP``, run by ``hubbub-fanout``): each upstream entry becomes one POST to
the URL of the first rule matching its hub, category and event, so a service in any language
handles invocations and connection events the way it would behind Azure SignalR Service in
serverless mode (the Azure Functions SignalR trigger reads these requests unchanged).

- Rules: ``HUBBUB_UPSTREAM_RULES`` (a JSON list of ``{"urlTemplate", "hubPattern",
  "categoryPattern", "eventPattern"}``, in order) and/or ``HUBBUB_UPSTREAM_URL`` (one template
  for everything, after the rules). A pattern is ``*``, a name, or names joined by commas,
  matched case-insensitively; ``{hub}``, ``{category}``, ``{event}`` in a template are replaced,
  URL-escaped. No rule matches: no request, and no answer (another service may answer).
- Requests: ``X-ASRS-Hub``, ``-Category`` (``connections`` | ``messages``), ``-Event``
  (``connected``, ``disconnected``, or the invoked method), ``-Connection-Id``, ``-User-Id``
  (with a user), ``-User-Claims`` (``type: value, type: value``), ``-Signature``
  (``sha256=<hex HMAC-SHA256(key, connection id)>`` per access key, comma-joined),
  ``traceparent``. Bodies: ``{"type":10}`` (connected), ``{"Type":11}`` or
  ``{"Type":11,"Error":"…"}`` (disconnected), the client's invocation as a JSON hub-protocol
  message without the record separator (messages), as Azure sends them.
- Answers to a blocking invocation: a 2xx body is the framed Completion for the client (record
  separator optional); an empty 2xx body is a null result; any other status, a timeout or an
  unreachable URL is an error for the caller. Invocations are not retried (the caller waits);
  connection events are, with exponential backoff, on connect errors, timeouts, 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from opentelemetry.trace import SpanKind, Tracer

from hubbub.metrics import Metrics
from hubbub.settings import Settings
from hubbub.telemetry import current_traceparent, span
from hubbub.wire.envelopes import Event, UpstreamEntry

from .consumer import Answer

log = logging.getLogger("hubbub.upstream.webhook")

RS = b"\x1e"
RETRY_FIRST = 0.5  # seconds before the first retry of a connection event, doubling
RETRY_ATTEMPTS = 5  # attempts at most (the first one included)
# A connection event's attempts end this much before the consumer's handler timeout
# (HUBBUB_INVOCATION_TIMEOUT), so the last one is not cancelled half-way.
DEADLINE_MARGIN = 0.9
# Idle pooled connections are dropped after this long: below the 5 s keep-alive timeout of
# uvicorn and others, so a request is not sent on one the server is closing just then.
KEEPALIVE = 4.0

_PLACEHOLDER = re.compile(r"\{(hub|category|event)\}")
_RULE_KEYS = {
    "urltemplate": "urlTemplate",
    "hubpattern": "hubPattern",
    "categorypattern": "categoryPattern",
    "eventpattern": "eventPattern",
}
# Header values are one line: claim values with control characters are flattened.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidRules(ValueError):
    """HUBBUB_UPSTREAM_URL / HUBBUB_UPSTREAM_RULES cannot be used (the message says why)."""


def _pattern(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRules(f"{where} must be a non-empty string ('*', a name, or 'a,b')")
    names = frozenset(part.strip().lower() for part in value.split(","))
    if "" in names:
        raise InvalidRules(f"{where} has an empty name in {value!r}")
    return names


def _template(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRules(f"{where} must be a URL template string")
    probe = _PLACEHOLDER.sub("x", value)
    parts = urlsplit(probe)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRules(f"{where} must be an absolute http:// or https:// URL")
    if "{" in probe or "}" in probe:
        raise InvalidRules(f"{where}: only {{hub}}, {{category}} and {{event}} may be replaced")
    return value


@dataclass(frozen=True, slots=True)
class Rule:
    """One upstream setting: where the events it matches go."""

    url_template: str
    hubs: frozenset[str] = frozenset({"*"})
    categories: frozenset[str] = frozenset({"*"})
    events: frozenset[str] = frozenset({"*"})

    def matches(self, hub: str, category: str, event: str) -> bool:
        return all(
            "*" in names or value.lower() in names
            for names, value in (
                (self.hubs, hub),
                (self.categories, category),
                (self.events, event),
            )
        )

    def url(self, hub: str, category: str, event: str) -> str:
        values = {"hub": hub, "category": category, "event": event}
        return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe=""), self.url_template)


def parse_rules(settings: Settings) -> list[Rule]:
    """The rules of ``settings``, in order (raises :class:`InvalidRules` saying what is wrong)."""
    rules: list[Rule] = []
    for i, raw in enumerate(settings.upstream_rules):
        where = f"HUBBUB_UPSTREAM_RULES[{i}]"
        if not isinstance(raw, Mapping):
            raise InvalidRules(f"{where} must be an object")
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            name = _RULE_KEYS.get(str(key).lower())
            if name is None:
                known = ", ".join(_RULE_KEYS.values())
                raise InvalidRules(f"{where} has an unknown key {key!r} (known: {known})")
            fields[name] = value
        if "urlTemplate" not in fields:
            raise InvalidRules(f"{where} has no urlTemplate")
        rules.append(
            Rule(
                _template(fields["urlTemplate"], f"{where}.urlTemplate"),
                *(
                    _pattern(fields.get(name, "*"), f"{where}.{name}")
                    for name in ("hubPattern", "categoryPattern", "eventPattern")
                ),
            )
        )
    if settings.upstream_url:
        rules.append(Rule(_template(settings.upstream_url, "HUBBUB_UPSTREAM_URL")))
    return rules


def signature(keys: tuple[str, ...], connection_id: str) -> str:
    """``X-ASRS-Signature``: ``sha256=<hex>`` per access key, comma-joined without spaces."""
    message = connection_id.encode()
    return ",".join(
        "sha256=" + hmac.new(key.encode(), message, hashlib.sha256).hexdigest() for key in keys
    )


def claims_header(claims: bytes) -> str:
    """``X-ASRS-User-Claims`` as Azure writes it: ``type: value`` per claim (one per value of a
    list), joined by ``", "``; a value that is not a string is its JSON."""
    try:
        parsed = orjson.loads(claims)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    pairs: list[str] = []
    for name, value in parsed.items():
        for item in value if isinstance(value, list) else (value,):
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            pairs.append(f"{name}: {text}")
    return _CONTROL.sub(" ", ", ".join(pairs))


def request_body(entry: UpstreamEntry) -> bytes:
    """The body Azure sends for ``entry``."""
    if entry.event is Event.CONNECTED:
        return b'{"type":10}'
    if entry.event is Event.DISCONNECTED:
        if entry.error is None:
            return b'{"Type":11}'
        return b'{"Type":11,"Error":' + orjson.dumps(entry.error) + b"}"
    parts = [b'{"type":1,']
    if entry.call:
        parts += (b'"invocationId":', orjson.dumps(entry.call), b",")
    parts += (b'"target":', orjson.dumps(entry.target), b',"arguments":', entry.arguments, b"}")
    return b"".join(parts)


def event_name(entry: UpstreamEntry) -> str:
    if entry.event is Event.CONNECTED:
        return "connected"
    if entry.event is Event.DISCONNECTED:
        return "disconnected"
    return entry.target


def parse_completion(body: bytes) -> Answer:
    """The Completion a webhook answered (its first frame; record separator optional)."""
    frame = body.split(RS, 1)[0].strip()
    if not frame:
        return Answer()
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return Answer(error="Invocation failed: the upstream answered a body that is not JSON.")
    if not isinstance(message, dict) or message.get("type") != 3:
        return Answer(error="Invocation failed: the upstream answered no Completion message.")
    error = message.get("error")
    if error is not None:
        return Answer(error=str(error))
    return Answer(result=message.get("result"))


class _TooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes


class Webhooks:
    """The upstream handler that POSTs each entry to its webhook; ``await aclose()`` at the end.

    Raises :class:`InvalidRules` at construction if the settings' rules are unusable.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        max_connections: int = 100,
    ) -> None:
        self.rules = parse_rules(settings)
        self.keys = settings.access_keys
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        # An invocation's request ends before its caller's wait (and the consumer's handler
        # timeout); a connection event's retries end by the same deadline.
        self.timeout = min(settings.upstream_timeout, settings.invocation_timeout)
        self.deadline = settings.invocation_timeout * DEADLINE_MARGIN
        self.max_body = settings.max_message_size
        self.max_connections = max_connections
        # Made in the running loop at the first request (this may be constructed outside one).
        self._http: aiohttp.ClientSession | None = None
        self.closed = False

    def _session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise RuntimeError("Webhooks is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE
                ),
                # Each request is bounded by asyncio.timeout in _post; this is a backstop.
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # One client serves every user: a cookie a webhook sets for one connection's
                # request must not travel with the next user's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._http

    async def aclose(self) -> None:
        self.closed = True  # a connection event waiting to be retried gives up
        if self._http is not None:
            await self._http.close()

    def rule_for(self, hub: str, category: str, event: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(hub, category, event)), None)

    async def __call__(self, entry: UpstreamEntry) -> Answer | None:
        category = entry.event.category
        event = event_name(entry)
        rule = self.rule_for(entry.hub, category, event)
        if rule is None:
            return None
        url = rule.url(entry.hub, category, event)
        with span(
            self.tracer,
            f"POST webhook {category}/{event}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "hubbub.hub": entry.hub},
        ):
            headers = self._headers(entry, category, event)
            body = request_body(entry)
            if entry.event is Event.INVOCATION:
                return await self._invoke(entry, url, headers, body)
            await self._deliver(entry, url, headers, body)
            return None

    def _headers(self, entry: UpstreamEntry, category: str, event: str) -> dict[str, str]:
        # aiohttp writes header values as UTF-8 (str, not bytes): Azure sends user ids, claims
        # and events as UTF-8 too.
        headers = {
            "Content-Type": "application/json",
            "X-ASRS-Hub": entry.hub,
            "X-ASRS-Category": category,
            "X-ASRS-Event": _CONTROL.sub(" ", event),
            "X-ASRS-Connection-Id": entry.connection,
            "X-ASRS-Signature": signature(self.keys, entry.connection),
        }
        if entry.user:
            headers["X-ASRS-User-Id"] = _CONTROL.sub(" ", entry.user)
        claims = claims_header(entry.claims)
        if claims:
            headers["X-ASRS-User-Claims"] = claims
        traceparent = current_traceparent() or entry.traceparent
        if traceparent:
            headers["traceparent"] = traceparent
        return headers

    async def _post(self, url: str, headers: dict[str, str], body: bytes, within: float) -> _Reply:
        """One request; the answer's body (decoded, if compressed) read up to ``max_body``
        bytes (raises ``_TooLarge``, ``TimeoutError``, ``aiohttp.ClientError``)."""
        http = self._session()
        async with asyncio.timeout(within):
            response = await http.post(url, headers=headers, data=body, allow_redirects=False)
            try:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                    raise _TooLarge
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > self.max_body:
                        raise _TooLarge
                    chunks.append(chunk)
            except BaseException:
                response.close()  # its body not read to the end: the connection is not reused
                raise
            response.release()
        self.metrics.webhook_responses.labels(str(response.status)).inc()
        return _Reply(response.status, b"".join(chunks))

    async def _invoke(
        self, entry: UpstreamEntry, url: str, headers: dict[str, str], body: bytes
    ) -> Answer | None:
        """An invocation: one attempt; a blocking one gets the webhook's answer or an error."""
        try:
            reply = await self._post(url, headers, body, self.timeout)
        except _TooLarge:
            self.metrics.webhook_responses.labels("error").inc()
            return self._failed(entry, "the upstream's answer is larger than the message limit")
        except TimeoutError:  # asyncio.timeout's, or aiohttp's ServerTimeoutError
            self.metrics.webhook_responses.labels("timeout").inc()
            log.warning("webhook %s %r: no answer within %g s", entry.hub, event_name(entry),
                        self.timeout)  # fmt: skip
            return self._failed(entry, f"the upstream did not answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            self.metrics.webhook_responses.labels("error").inc()
            log.warning("webhook %s %r unreachable: %s", entry.hub, event_name(entry),
                        type(exc).__name__)  # fmt: skip
            return self._failed(entry, "the upstream could not be reached")
        if not 200 <= reply.status < 300:
            log.warning("webhook %s %r answered %d", entry.hub, event_name(entry), reply.status)
            return self._failed(entry, f"the upstream answered {reply.status}")
        if not entry.call:
            return None
        return parse_completion(reply.body)

    @staticmethod
    def _failed(entry: UpstreamEntry, why: str) -> Answer | None:
        return Answer(error=f"Invocation failed: {why}.") if entry.call else None

    async def _deliver(
        self, entry: UpstreamEntry, url: str, headers: dict[str, str], body: bytes
    ) -> None:
        """A connection event: retried with backoff on connect errors, timeouts, 429 and 5xx,
        at most :data:`RETRY_ATTEMPTS` times and until the deadline; then given up (logged)."""
        deadline = time.monotonic() + self.deadline
        delay = RETRY_FIRST
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            outcome: str
            try:
                reply = await self._post(
                    url, headers, body, max(0.001, min(self.timeout, remaining))
                )
            except _TooLarge:
                self.metrics.webhook_responses.labels("error").inc()
                return  # it answered: the event was delivered
            except TimeoutError:  # asyncio.timeout's, or aiohttp's ServerTimeoutError
                self.metrics.webhook_responses.labels("timeout").inc()
                outcome = "timed out"
            except aiohttp.ClientError as exc:
                self.metrics.webhook_responses.labels("error").inc()
                outcome = f"failed ({type(exc).__name__})"
            else:
                if reply.status < 500 and reply.status != 429:
                    if not 200 <= reply.status < 300:
                        log.warning("webhook %s %s of %s answered %d", entry.hub,
                                    event_name(entry), entry.connection, reply.status)  # fmt: skip
                    return
                outcome = f"answered {reply.status}"
            last = attempt == RETRY_ATTEMPTS or time.monotonic() + delay >= deadline
            if last or self.closed:
                log.warning("webhook %s %s of %s %s; given up after %d attempts", entry.hub,
                            event_name(entry), entry.connection, outcome, attempt)  # fmt: skip
                return
            log.info("webhook %s %s of %s %s; retrying in %.1f s", entry.hub, event_name(entry),
                     entry.connection, outcome, delay)  # fmt: skip
            self.metrics.webhook_retries.inc()
            await asyncio.sleep(delay)
            delay *= 2
            if self.closed:
                log.warning("webhook %s %s of %s not retried: stopping", entry.hub,
                            event_name(entry), entry.connection)  # fmt: skip
                return
