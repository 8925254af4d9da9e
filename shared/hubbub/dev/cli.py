"""``hubbub``: run a local deployment (``dev``), publish (``send``), watch (``listen``), mint
tokens (``token``), print Redis ACL rules (``redis-acl``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hubbub.dev.embedded import RedisProcess, server_version
from hubbub.dev.launcher import ChildProcess, LocalDeployment, NotHealthy, NotOurs, ProcessExited
from hubbub.dev.lifetime import ChildGroup, DirectoryLock, DirectoryTaken, port_in_use
from hubbub.dev.listen import Listener, listen
from hubbub.redis.acl import COMMANDS, rules
from hubbub.sdk.client import HubbubClient, HubbubError
from hubbub.settings import DEFAULT_ACCESS_KEY
from hubbub.startup import EXIT_STARTUP, StartupError, add_version, check_redis, load_settings
from hubbub.tokens import mint_token


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class _Stopped(Exception):
    """A signal (Ctrl-C, a closed terminal, ``kill``) asked ``hubbub dev`` to stop."""


class _Refused(Exception):
    """``hubbub dev`` cannot start or run as asked: one line for stderr says why."""


class _StopOnSignal:
    """The handler of SIGINT, SIGTERM and SIGHUP: the first one interrupts whatever runs
    (start-up or the wait) with :class:`_Stopped`, so that the children are stopped in order;
    a second Ctrl-C (and only that: a closed terminal may send two SIGHUPs) SIGKILLs them."""

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, group: ChildGroup) -> None:
        self.group = group
        self.stopping = False
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stopped(signum)
        if signum == signal.SIGINT:
            self.group.signal(signal.SIGKILL)

    def install(self) -> None:
        self.previous = {sig: signal.signal(sig, self) for sig in self.signals}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


DEV_METRICS_HOST = "127.0.0.1"  # workers' /metrics under hubbub dev: this machine only


def _check_ports(args: argparse.Namespace) -> None:
    """Refuse ports that a listener holds, before any child starts: a child would lose the
    race for them, and the process holding them would answer its health check."""
    wanted = [(args.host, args.port + i, f"gateway {i + 1}") for i in range(args.gateways)]
    if args.metrics_port:
        # Workers serve /metrics on the loopback interface (HUBBUB_METRICS_HOST, below).
        wanted += [
            (DEV_METRICS_HOST, args.metrics_port + i, f"worker {i + 1} /metrics")
            for i in range(args.workers)
        ]
    if args.redis_url is None and args.redis_port is not None:
        wanted.append(("127.0.0.1", args.redis_port, "Redis"))
    for host, port, what in wanted:
        if port_in_use(host, port):
            raise _Refused(
                f"port {port} ({what}) is already in use, by another hubbub dev? "
                "stop it, or choose other ports (--port, --metrics-port, --redis-port)"
            )


def _wait_healthy(gateway: ChildProcess) -> None:
    try:
        gateway.wait_healthy_sync(within=30.0)
    except ProcessExited as exc:
        raise _Refused(f"{gateway.name} exited during start-up (code {exc.returncode})") from None
    except NotOurs as exc:
        raise _Refused(f"{exc}: is another hubbub dev running?") from None
    except NotHealthy:
        raise _Refused(f"{gateway.name} at {gateway.url} did not become healthy") from None


def dev(args: argparse.Namespace) -> int:
    """Embedded Redis, two gateways and two workers on this machine, until Ctrl-C.

    The children run in a process group of their own that dies with this process (see
    :mod:`hubbub.dev.lifetime`): the terminal's Ctrl-C reaches only this process, which stops
    the gateways and workers while Redis still answers them, then Redis. SIGTERM and SIGHUP (a
    closed terminal) do the same; after a SIGKILL, Linux SIGTERMs the children.
    """
    settings = load_settings("hubbub dev")
    access_key = args.access_key or settings.access_key
    workdir = Path(args.workdir)
    embedded = args.redis_url is None
    # The embedded Redis's directory (its AOF) belongs to one hubbub dev at a time.
    lock = DirectoryLock(workdir / "hubbub-dev.lock")
    group = ChildGroup()
    redis: RedisProcess | None = None
    redis_url = args.redis_url
    try:
        if embedded:
            lock.acquire()
        else:  # the user's Redis: a bad URL or no answer is one line, before any child starts
            try:
                asyncio.run(
                    check_redis(settings.model_copy(update={"redis_url": redis_url}), "hubbub-dev")
                )
            except StartupError as exc:
                print(f"hubbub dev: {exc}", file=sys.stderr)
                return EXIT_STARTUP
        _check_ports(args)
        if embedded:
            redis_dir = workdir / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            redis = RedisProcess(
                port=args.redis_port, directory=str(redis_dir), appendonly=True, group=group
            )
            redis_url = redis.url
    except DirectoryTaken as exc:
        print(
            f"hubbub dev: another hubbub dev is running in {workdir} (pid {exc.holder}); "
            "stop it, or pass another --workdir",
            file=sys.stderr,
        )
        return 1
    except (_Refused, FileNotFoundError) as exc:  # FileNotFoundError: no Redis binary
        lock.release()
        print(f"hubbub dev: {exc}", file=sys.stderr)
        return 1

    on_signal = _StopOnSignal(group)
    deployment = LocalDeployment(
        redis_url,
        access_key,
        host=args.host,
        gateway_id="dev-{name}",
        worker_id="dev-{name}",
        settings={
            # Any page may talk to a local deployment; production allows none unless configured.
            "HUBBUB_CORS_ORIGINS": os.environ.get("HUBBUB_CORS_ORIGINS", '["*"]'),
            # Nothing of a development machine's is served beyond it.
            "HUBBUB_METRICS_HOST": DEV_METRICS_HOST,
            # The banner says it once, rather than each gateway.
            "HUBBUB_WARN_DEFAULT_ACCESS_KEY": "false",
            # The demo page at / (a developer's deployment only: it mints tokens for anyone).
            "HUBBUB_DEMO_PAGE": "true",
        },
        group=group,
    )
    code = 0
    try:
        on_signal.install()
        if redis is not None:
            try:
                redis.start()
            except (RuntimeError, TimeoutError) as exc:
                raise _Refused(str(exc)) from None
        for i in range(args.gateways):
            deployment.launch_gateway(port=args.port + i)
        for i in range(args.workers):
            port = args.metrics_port + i if args.metrics_port else 0
            deployment.start_worker(HUBBUB_METRICS_PORT=str(port))
        for gateway in deployment.gateways:
            _wait_healthy(gateway)
        for child in deployment.exited():  # a worker that refused to start (its line is above)
            raise _Refused(f"{child.name} exited during start-up (code {child.returncode})")
        _print_banner(args, deployment, redis, redis_url, access_key)
        code = _wait(deployment, redis)
    except _Stopped:
        code = 0
    except _Refused as exc:
        print(f"hubbub dev: {exc}", file=sys.stderr)
        code = 1
    finally:
        on_signal.stopping = True  # from now on, only a second Ctrl-C: SIGKILL them
        deployment.stop()  # gateways and workers first, while Redis still answers them
        if redis is not None:
            redis.stop()
        group.signal(signal.SIGKILL)  # anything that is left
        lock.release()
        on_signal.restore()
        with contextlib.suppress(OSError):  # a closed terminal cannot be written to
            print("hubbub dev: stopped", file=sys.stderr)
    return code


def _wait(deployment: LocalDeployment, redis: RedisProcess | None) -> int:
    """Until a signal (:class:`_Stopped`) or a child's exit (1)."""
    while True:
        if deployment.exited() or (redis is not None and not redis.running):
            print("hubbub dev: a child process exited; stopping", file=sys.stderr)
            return 1
        time.sleep(0.2)


def _own_command() -> str:
    """This ``hubbub`` as a command to paste: ``hubbub`` if that name on PATH is this one,
    else the path it was started by (``.venv/bin/hubbub`` from the repository's root)."""
    invoked = sys.argv[0]
    if Path(invoked).name != "hubbub" or not Path(invoked).exists():
        beside = Path(sys.executable).with_name("hubbub")
        invoked = str(beside) if beside.exists() else "hubbub"
    on_path = shutil.which("hubbub")
    if on_path is not None and Path(invoked).exists() and os.path.samefile(on_path, invoked):
        return "hubbub"
    return shlex.quote(invoked)


def _print_banner(
    args: argparse.Namespace,
    deployment: LocalDeployment,
    redis: RedisProcess | None,
    redis_url: str,
    key: str,
) -> None:
    urls = [g.url for g in deployment.gateways]
    first = urls[0]
    if redis is not None:
        kind = f"{server_version(redis.binary)}, data in {args.workdir}/redis"
    else:
        kind = "yours, --redis-url"
    metrics = ", ".join(f"{url}/metrics" for url in urls) + " (gateways)"
    if args.metrics_port and args.workers:
        ports = range(args.metrics_port, args.metrics_port + args.workers)
        metrics += "; " + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports) + " (workers)"
    client = mint_token(key, f"{first}/client", user_id="alice")
    warning = (
        "The access key is the development default: anyone can sign tokens with it. Set\n"
        "HUBBUB_ACCESS_KEY to a secret of your own before this is reachable by others.\n\n"
        if key == DEFAULT_ACCESS_KEY
        else ""
    )
    send_url = f"{first}/api/hubs/chat/:send"
    service = mint_token(key, send_url, minutes=60)
    hubbub = _own_command()
    print(
        f"""
Hubbub is running.
  gateways : {", ".join(urls)}   (REST docs: {first}/docs)
  redis    : {redis_url}   ({kind})
  metrics  : {metrics}

For `hubbub listen` / `send` / `token` in another terminal, and the Python SDK:
  export HUBBUB_REDIS_URL={shlex.quote(redis_url)} HUBBUB_ACCESS_KEY={shlex.quote(key)}

Watch hub "chat" in another terminal (one JSON line per message):
  {hubbub} listen --url {urls[-1]} --hub chat --user alice

Connect a SignalR client to {urls[-1]}/hubs/chat with this access token (user "alice"):
  {client}

Broadcast to every client of hub "chat":
  {hubbub} send --url {first} --hub chat newMessage '"hello from hubbub"'
or with curl (token valid 60 minutes):
  curl -i -X POST '{send_url}' -H 'Authorization: Bearer {service}' \\
       -H 'Content-Type: application/json' -d '{{"target":"newMessage","arguments":["hi"]}}'

{warning}Ctrl-C stops everything.
""",
        flush=True,
    )


def _access_key(args: argparse.Namespace) -> str:
    """``--access-key``, else ``$HUBBUB_ACCESS_KEY``, else the development key (never shown
    in ``--help``: it may be a secret)."""
    key: str = args.access_key or load_settings("hubbub").access_key
    return key


async def _send(args: argparse.Namespace) -> str:
    arguments = [_json_or_text(a) for a in args.arguments]
    async with HubbubClient(args.url, _access_key(args), args.hub) as client:
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
    except HubbubError as exc:
        print(f"hubbub send: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"hubbub send: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(message_id)
    return 0


def token(args: argparse.Namespace) -> int:
    audience = args.audience or f"{args.url.rstrip('/')}/client"
    print(
        mint_token(
            _access_key(args),
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


def listen_command(args: argparse.Namespace) -> int:
    listener = Listener(
        url=args.url,
        hub=args.hub,
        access_key=_access_key(args),
        user=args.user,
        groups=args.group,
    )
    return listen(listener)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    settings = load_settings("hubbub")
    p = argparse.ArgumentParser(
        prog="hubbub",
        description="Hubbub's command line: run a local deployment (dev), publish (send), "
        "watch a hub (listen), mint client tokens (token), print Redis ACL rules (redis-acl).",
        formatter_class=_HelpFormatter,
    )
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(
            name, help=summary, description=summary, formatter_class=_HelpFormatter, **kwargs
        )
        add_version(c)
        return c

    d = command("dev", "Run Redis, gateways and fan-out workers on this machine, until Ctrl-C.")
    d.add_argument("--host", default="127.0.0.1", help="interface the gateways listen on")
    d.add_argument("--port", type=int, default=settings.port, help="first gateway's port")
    d.add_argument("--gateways", type=int, default=2, help="how many gateways")
    d.add_argument("--workers", type=int, default=2, help="how many fan-out workers")
    d.add_argument(
        "--redis-url", help="use this Redis instead of starting one (default: an embedded one)"
    )
    d.add_argument(
        "--redis-port", type=int, default=None, help="embedded Redis's port (default: a free one)"
    )
    d.add_argument(
        "--metrics-port",
        type=int,
        default=settings.metrics_port,
        help="first worker's /metrics port on 127.0.0.1, the next ones follow (0: none)",
    )
    d.add_argument(
        "--workdir",
        default=".hubbub",
        help="where the embedded Redis keeps its data (one hubbub dev at a time)",
    )
    d.add_argument(
        "--access-key",
        default=None,
        help="key the gateways sign and verify tokens with (default: $HUBBUB_ACCESS_KEY, "
        "else the development key)",
    )
    d.set_defaults(func=dev)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=f"http://127.0.0.1:{settings.port}", help="a gateway's base URL"
    )
    common.add_argument("--hub", default="chat", help="hub name")
    common.add_argument(
        "--access-key",
        default=None,
        help="key to sign tokens with (default: $HUBBUB_ACCESS_KEY, else the development key)",
    )

    s = command("send", "Publish a message through the REST API.", parents=[common])
    who = s.add_mutually_exclusive_group()
    who.add_argument("--group", help="send to this group's connections")
    who.add_argument("--user", help="send to this user's connections")
    who.add_argument("--connection", help="send to this connection")
    s.add_argument(
        "--exclude", action="append", default=[], help="connection id to leave out (repeatable)"
    )
    s.add_argument("target", help="client method, e.g. newMessage")
    # default=[]: argparse would otherwise list it as required when nothing is given.
    s.add_argument(
        "arguments", nargs="*", default=[], help="its arguments (JSON, else taken as strings)"
    )
    s.set_defaults(func=send)

    listen_ = command(
        "listen",
        "Connect to a hub as a SignalR client and print each message it receives as one JSON "
        "line on stdout (status lines go to stderr); Ctrl-C stops.",
        parents=[common],
    )
    listen_.add_argument("--user", help="user id in the client token (default: anonymous)")
    listen_.add_argument(
        "--group",
        action="append",
        default=[],
        help="join this group after connecting (repeatable; the token gets the role to)",
    )
    listen_.set_defaults(func=listen_command)

    t = command("token", "Mint a client access token.", parents=[common])
    t.add_argument("--user", help="user id (the token's sub claim)")
    t.add_argument("--minutes", type=float, default=60, help="lifetime")
    t.add_argument(
        "--role", action="append", help="a role, e.g. hubbub.joinLeaveGroup (repeatable)"
    )
    t.add_argument("--audience", help="the token's aud (default: <url>/client)")
    t.set_defaults(func=token)

    a = command(
        "redis-acl",
        "Print the least-privilege Redis ACL rules of a gateway, a worker or an upstream "
        "service (hubbub.upstream).",
    )
    a.add_argument("role", choices=list(COMMANDS), help="whose rules")
    a.add_argument("--prefix", default=settings.key_prefix, help="key prefix ($HUBBUB_KEY_PREFIX)")
    a.set_defaults(func=redis_acl)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
