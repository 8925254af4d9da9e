"""What every entry point checks once before it serves: its settings load, its Redis URL
makes sense and Redis answers, its port is free.

A failure is one line on stderr that names what is wrong (the Redis URL with its password
redacted, and the reason) and exit code :data:`EXIT_STARTUP`, never a traceback: a wrong
``HUBBUB_REDIS_URL`` is the most common first mistake, and a process that retried forever, or
printed sixty lines, would hide it. After start-up, Redis errors are retried as usual
(:mod:`hubbub.redis.endpoint`): an outage of a running deployment is not a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import os
import socket
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from redis.exceptions import RedisError

from hubbub.redis.endpoint import RedisEndpoint
from hubbub.settings import Settings

EXIT_STARTUP = 2  # a configuration the process cannot start with (argparse's code too)
REDIS_SCHEMES = ("redis", "rediss", "unix")


class StartupError(Exception):
    """The process cannot start as configured; ``str()`` is the one line that says why."""


def version() -> str:
    """This installation's version, from its distribution's metadata."""
    try:
        return _distribution_version("hubbub")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version`` on ``parser``: the program name and :func:`version`."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: fit for logs and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if not password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def check_redis_url(url: str) -> None:
    """Raise :class:`StartupError` unless ``url`` is a Redis URL Hubbub can connect with."""
    shown = redacted(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if it is not a number in 0-65535
    except ValueError as exc:
        raise StartupError(f"bad Redis URL {shown}: {exc}") from None
    if parts.scheme not in REDIS_SCHEMES:
        got = f"scheme {parts.scheme!r}" if "://" in url else "no scheme"
        raise StartupError(
            f"bad Redis URL {shown}: {got}, expected redis://host:port, rediss:// or unix://"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise StartupError(f"bad Redis URL {shown}: unix:// needs a socket path")
        return
    if not parts.hostname:
        raise StartupError(f"bad Redis URL {shown}: no host")
    if port == 0:
        raise StartupError(f"bad Redis URL {shown}: port 0")


async def check_redis(settings: Settings, name: str) -> None:
    """One ``PING`` through the client the process will use (its mode, TLS, credentials),
    without retries; :class:`StartupError` if the URL is bad or Redis does not answer."""
    check_redis_url(settings.redis_url)
    endpoint = dataclasses.replace(RedisEndpoint.from_settings(settings, name), retries=0)
    where = redacted(settings.redis_url)
    if endpoint.mode != "standalone":
        where += f" ({endpoint.describe()})"
    try:
        redis = endpoint.redis()
    except (ValueError, RedisError) as exc:
        raise StartupError(f"bad Redis URL {where}: {exc}") from None
    try:
        limit = endpoint.connect_timeout + endpoint.timeout
        await asyncio.wait_for(redis.ping(), limit)
    except TimeoutError:
        raise StartupError(f"cannot reach Redis at {where}: no answer within {limit:g} s") from None
    except (RedisError, OSError, ValueError) as exc:
        raise StartupError(f"cannot reach Redis at {where}: {_reason(exc)}") from None
    except Exception as exc:  # whatever it is: one line, as the check promises
        raise StartupError(f"cannot reach Redis at {where}: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            await redis.aclose()
        except (RedisError, OSError):
            pass


def _reason(exc: BaseException) -> str:
    """The system's word for a failed connection ("Connection refused", "Name or service not
    known") when there is one under redis-py's error, else its message, on one line."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror) and cause.strerror:
            return f"host not found ({cause.strerror})"
        if isinstance(cause, OSError) and cause.errno and not isinstance(cause, RedisError):
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(prog: str, error: object) -> NoReturn:
    """Print ``prog: error`` on stderr and exit with :data:`EXIT_STARTUP`."""
    print(f"{prog}: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_STARTUP)


def load_settings(prog: str, **overrides: object) -> Settings:
    """The process's :class:`Settings`, or one line per wrong setting and exit 2."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"HUBBUB_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        fail(prog, f"invalid settings: {problems}")


def require_redis(prog: str, settings: Settings, name: str) -> None:
    """:func:`check_redis` for a process without a running event loop; exits 2 on failure."""
    try:
        asyncio.run(check_redis(settings, name))
    except StartupError as exc:
        fail(prog, exc)


def bind_port(prog: str, host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to ``host:port`` (handed to the server), or one line
    and exit 2 if the port is taken: before anything is logged as ready."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(prog, f"cannot listen on {host}:{port}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(prog, f"port {port} on {host} is already in use (HUBBUB_PORT, HUBBUB_HOST)")
        fail(prog, f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return sock
