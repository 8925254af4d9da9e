"""``hubbub``: run a local deployment (``dev``), publish (``send``), mint tokens (``token``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hubbub.dev.embedded import RedisProcess
from hubbub.dev.launcher import ChildProcess, LocalDeployment, NotHealthy, ProcessExited
from hubbub.redis.acl import COMMANDS, rules
from hubbub.sdk.client import HubbubClient
from hubbub.settings import Settings
from hubbub.tokens import mint_token


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _wait_healthy(gateway: ChildProcess) -> None:
    try:
        gateway.wait_healthy_sync(within=30.0)
    except ProcessExited as exc:
        raise SystemExit(f"a gateway exited during start-up (code {exc.returncode})") from None
    except NotHealthy:
        raise SystemExit(f"gateway at {gateway.url} did not become healthy") from None


def dev(args: argparse.Namespace) -> int:
    """Embedded Redis, two gateways and two workers on this machine, until Ctrl-C."""
    settings = Settings()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    redis: RedisProcess | None = None
    redis_url = args.redis_url
    if redis_url is None:
        redis_dir = workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        redis = RedisProcess(port=args.redis_port, directory=str(redis_dir), appendonly=True)
        redis.start()
        redis_url = redis.url
    # The children write to this terminal; a Ctrl-C reaches them as well as this process.
    deployment = LocalDeployment(
        redis_url,
        settings.access_key,
        host=args.host,
        gateway_id="dev-{name}",
        worker_id="dev-{name}",
        # Any page may talk to a local deployment; production allows none unless configured.
        settings={"HUBBUB_CORS_ORIGINS": os.environ.get("HUBBUB_CORS_ORIGINS", '["*"]')},
    )
    try:
        for i in range(args.gateways):
            deployment.launch_gateway(port=args.port + i)
        for i in range(args.workers):
            deployment.start_worker(HUBBUB_METRICS_PORT=str(9102 + i))
        for gateway in deployment.gateways:
            _wait_healthy(gateway)
        _print_banner([g.url for g in deployment.gateways], redis_url, settings.access_key)
        return _wait(deployment)
    finally:
        deployment.stop()
        if redis is not None:
            redis.stop()
        print("hubbub dev: stopped", file=sys.stderr)


def _wait(deployment: LocalDeployment) -> int:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        if deployment.exited():
            print("hubbub dev: a child process exited; stopping", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return 0


def _print_banner(urls: list[str], redis_url: str, key: str) -> None:
    first = urls[0]
    client = mint_token(key, f"{first}/client", user_id="alice")
    send_url = f"{first}/api/hubs/chat/:send"
    service = mint_token(key, send_url, minutes=60)
    print(
        f"""
Hubbub is running.
  gateways : {", ".join(urls)}   (REST docs: {first}/docs)
  redis    : {redis_url}

Connect a SignalR client to {urls[-1]}/hubs/chat with this access token (user "alice"):
  {client}

Broadcast to every client of hub "chat":
  hubbub send --url {first} --hub chat newMessage '"hello from hubbub"'
or with curl (token valid 60 minutes):
  curl -i -X POST '{send_url}' -H 'Authorization: Bearer {service}' \\
       -H 'Content-Type: application/json' -d '{{"target":"newMessage","arguments":["hi"]}}'

Ctrl-C stops everything.
""",
        flush=True,
    )


async def _send(args: argparse.Namespace) -> str:
    arguments = [_json_or_text(a) for a in args.arguments]
    async with HubbubClient(args.url, args.access_key, args.hub) as client:
        if args.group:
            return await client.send_to_group(args.group, args.target, arguments, args.exclude)
        if args.user:
            return await client.send_to_user(args.user, args.target, arguments)
        if args.connection:
            return await client.send_to_connection(args.connection, args.target, arguments)
        return await client.send_to_all(args.target, arguments, args.exclude)


def send(args: argparse.Namespace) -> int:
    try:
        message_id = asyncio.run(_send(args))
    except httpx.HTTPStatusError as exc:
        print(f"error {exc.response.status_code}: {exc.response.text}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(message_id)
    return 0


def token(args: argparse.Namespace) -> int:
    audience = args.audience or f"{args.url.rstrip('/')}/client"
    print(
        mint_token(
            args.access_key,
            audience,
            minutes=args.minutes,
            user_id=args.user,
            hub=args.hub.lower() if args.hub else None,
            roles=args.role,
        )
    )
    return 0


def redis_acl(args: argparse.Namespace) -> int:
    """Print the ACL rules of a role, for ``redis-cli ACL SETUSER <user> on ><password> ...``."""
    print(" ".join(rules(args.role, args.prefix)))
    return 0


def parser() -> argparse.ArgumentParser:
    settings = Settings()
    p = argparse.ArgumentParser(prog="hubbub", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dev", help="run Redis, 2 gateways and 2 workers locally")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=settings.port, help="first gateway port")
    d.add_argument("--gateways", type=int, default=2)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    d.add_argument("--redis-port", type=int, default=None, help="embedded Redis port")
    d.add_argument("--workdir", default=".hubbub", help="where the embedded Redis keeps data")
    d.set_defaults(func=dev)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=f"http://127.0.0.1:{settings.port}")
    common.add_argument("--hub", default="chat")
    common.add_argument(
        "--access-key", default=settings.access_key, help="default: $HUBBUB_ACCESS_KEY"
    )

    s = sub.add_parser("send", parents=[common], help="publish a message through the REST API")
    who = s.add_mutually_exclusive_group()
    who.add_argument("--group")
    who.add_argument("--user")
    who.add_argument("--connection")
    s.add_argument("--exclude", action="append", default=[], help="connection id to leave out")
    s.add_argument("target", help="client method, e.g. newMessage")
    s.add_argument("arguments", nargs="*", help="arguments (JSON, else taken as strings)")
    s.set_defaults(func=send)

    t = sub.add_parser("token", parents=[common], help="mint a client access token")
    t.add_argument("--user")
    t.add_argument("--minutes", type=float, default=60)
    t.add_argument("--role", action="append", help="e.g. hubbub.joinLeaveGroup")
    t.add_argument("--audience")
    t.set_defaults(func=token)

    a = sub.add_parser(
        "redis-acl",
        help="print the least-privilege Redis ACL rules of a gateway, a worker or an upstream "
        "service (hubbub.upstream)",
    )
    a.add_argument("role", choices=list(COMMANDS))
    a.add_argument("--prefix", default=settings.key_prefix, help="default: $HUBBUB_KEY_PREFIX")
    a.set_defaults(func=redis_acl)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
