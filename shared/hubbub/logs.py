"""Logging setup: one line per record, with secrets in URLs redacted."""

from __future__ import annotations

import logging
import re
import sys

_SECRET_QUERY = re.compile(r"(?i)\b(access_token|id)=[^&\s\"']*")


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


def configure(level: str, component: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
