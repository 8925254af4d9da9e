"""Logging setup: one line per record, with secrets in URLs redacted, and refusals rate-limited.

A refusal (a 4xx answer, a refused WebSocket upgrade or handshake, a connection closed for
breaking a limit) is logged as one WARNING line, without a traceback, on the :data:`REFUSALS`
logger. Refusals are what a misbehaving or hostile client makes happen as fast as it likes (a
reconnect storm with expired tokens), so that logger lets a steady rate through and counts the
rest, which the next line it lets through reports.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson
from opentelemetry import trace

REFUSALS = "hubbub.refused"
"""The logger every refusal is logged on (``logging.getLogger(REFUSALS).warning(...)``)."""

_SECRET_QUERY = re.compile(r"(?i)\b(access_token|id)=[^&\s\"']*")


def printable(text: str) -> str:
    """Client-chosen text for a log line: control characters escaped, so that a newline in a
    path or a name cannot start a forged line in the text log."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def redact(text: str) -> str:
    """Hide ``access_token`` and ``id`` query values: both let someone take a connection."""
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class Printable(logging.Filter):
    """Every refusal line on one line: what a client chose (a request path as decoded, a
    group name, a handshake's protocol name) may hold a newline that would otherwise start a
    forged line in the text log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = printable(message), ()
        return True


class RateLimit(logging.Filter):
    """A token bucket: lets ``rate`` records a second through, after a burst of ``burst``.

    Dropped records are counted; the next record let through ends with how many were dropped,
    so a flood shows in the log as a few lines and a number, never as silence."""

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__()
        self.rate = rate
        self.burst = float(burst)
        self.allowance = float(burst)
        self.stamp = time.monotonic()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        self.allowance = min(self.burst, self.allowance + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.allowance < 1:
            self.dropped += 1
            return False
        self.allowance -= 1
        if self.dropped:
            record.msg = f"{record.getMessage()} ({self.dropped} more refusals not logged)"
            record.args = ()
            self.dropped = 0
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the trace and span ids of the current span (if any)
    and the ``gateway_id`` / ``connection_id`` a call site passed as ``extra``."""

    EXTRAS = ("connection_id", "hub")

    def __init__(self, component: str, static: dict[str, str]) -> None:
        super().__init__()
        self.component = component
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key in self.EXTRAS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(
    level: str,
    component: str,
    fmt: str = "text",
    static: dict[str, str] | None = None,
    *,
    refusals_per_second: float = 10.0,
    refusal_burst: int = 100,
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        json_formatter = JsonFormatter(component, static or {})
        json_formatter.converter = time.gmtime
        handler.setFormatter(json_formatter)
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    refusals = logging.getLogger(REFUSALS)
    refusals.filters[:] = [RateLimit(refusals_per_second, refusal_burst), Printable()]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # the root's level, whatever uvicorn set before
