"""Redis ACL users for gateways and workers, least privilege (issue 9, docs).

A real ``redis-server`` with an ACL file: a gateway user and a worker user with the rules of
:mod:`hubbub.redis.acl`, and a default user for the test's own inspection. A whole deployment
(two gateways, a worker) runs every kind of send and membership change, a gateway dies and is
reaped, and Redis's ACL log must have recorded no denial; then each user is shown to be unable
to do what its role does not need.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.acl import Role, rules
from hubbub.sdk.client import HubbubClient
from hubbub.tokens import mint_token
from hubbub.upstream import Call, Upstream
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

PREFIX = "acl"
PASSWORDS: dict[Role, str] = {
    "gateway": "gateway-secret",
    "worker": "worker-secret",
    "service": "service-secret",
}


def _bearer(audience: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(ACCESS_KEY, audience)}"}


def user_url(server: RedisProcess, role: Role) -> str:
    return f"redis://hubbub-{role}:{PASSWORDS[role]}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisProcess]:
    acl = tmp_path / "users.acl"
    lines = ["user default on nopass ~* &* +@all"]  # the test's own inspection
    for role, password in PASSWORDS.items():
        # The rules as the docs tell an operator to get them: `hubbub redis-acl <role>`.
        printed = subprocess.run(
            [str(Path(sys.executable).parent / "hubbub"), "redis-acl", role, "--prefix", PREFIX],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert printed == " ".join(rules(role, PREFIX))
        lines.append(f"user hubbub-{role} on >{password} {printed}")
    acl.write_text("\n".join(lines) + "\n")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisProcess(directory=str(directory), extra_args=["--aclfile", str(acl)])
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def admin(acl_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(acl_server.url)
    yield client
    await client.aclose()


async def test_a_deployment_runs_under_its_least_privilege_users(
    acl_server: RedisProcess, admin: Redis, tmp_path: Path
) -> None:
    deployment = Deployment(acl_server.url, tmp_path, PREFIX)
    try:
        gateway_url = user_url(acl_server, "gateway")
        first = await deployment.start_gateway(HUBBUB_REDIS_URL=gateway_url)
        second = await deployment.start_gateway(HUBBUB_REDIS_URL=gateway_url)
        deployment.start_worker(HUBBUB_REDIS_URL=user_url(acl_server, "worker"))
        alice = await RawClient.connect(
            second.url, token=client_token("alice", roles=["hubbub.joinLeaveGroup"])
        )
        assert alice.connection_id is not None
        joined = await alice.invoke("JoinGroup", "room")
        assert joined == {"type": 3, "invocationId": "1"}, joined
        # The way back: an upstream service under its own user answers an invocation and
        # sends from its handler (consumer group, leases, trimming, the publish stream).
        service = Upstream(
            deployment.service_settings(redis_url=user_url(acl_server, "service")),
            name="acl-service",
        )

        @service.hub("chat").on("echo")
        async def echo(call: Call, value: int) -> int:
            await service.hub("chat").send_to_connection(call.connection_id, "echoed", [value])
            return value

        async with service:
            await deployment.upstream_services_seen()
            await alice.send({"type": 1, "invocationId": "2", "target": "echo", "arguments": [5]})
            # The handler's send, then its answer: both to this connection, in that order.
            assert (await alice.recv())["target"] == "echoed"
            answered = await alice.recv()
            assert answered == {"type": 3, "invocationId": "2", "result": 5}, answered
            service.stop()
        async with HubbubClient(first.url, ACCESS_KEY, "chat") as api:
            # Each send is awaited at the client before the next step: membership is resolved
            # when a worker routes a message, not when it is accepted.
            await api.send_to_all("all", [1], idempotency_key="acl-1")
            assert (await alice.recv())["target"] == "all"
            await api.send_to_group("room", "group", [2])
            assert (await alice.recv())["target"] == "group"
            await api.send_to_user("alice", "user", [3])
            assert (await alice.recv())["target"] == "user"
            await api.send_to_connection(alice.connection_id, "connection", [4])
            assert (await alice.recv())["target"] == "connection"
            await api.add_user_to_group("vip", "alice")
            assert await api.user_exists("alice")
            assert await api.user_in_group("vip", "alice")
            await api.send_to_group("vip", "vip", [5])
            assert (await alice.recv())["target"] == "vip"
            await api.remove_user_from_all_groups("alice")
            assert not await api.user_in_group("vip", "alice")
            await api.send_to_group("room", "left", [6])  # alice left: not for her
            # The read-only listings and the admin console's data, under the gateway's user.
            async with httpx.AsyncClient() as http:
                for path in (
                    "/api/hubs/chat/groups/room/connections",
                    "/api/hubs/chat/users/alice/connections",
                    "/api/hubs/chat/users/alice/groups",
                    "/api/hubs/chat/groups",
                    "/api/hubs/chat/counts",
                ):
                    url = first.url + path
                    r = await http.get(url, headers=_bearer(url))
                    assert r.status_code == 200, (path, r.text)
                admin_token = _bearer(f"{first.url}/api/admin")
                answers = {}
                for path in ("cluster", "hubs", "hubs/chat/connections", "hubs/chat/groups"):
                    r = await http.get(f"{first.url}/api/admin/{path}", headers=admin_token)
                    assert r.status_code == 200, (path, r.text)
                    answers[path] = r.json()
                assert len(answers["cluster"]["gateways"]) == 2, answers
                assert [c["id"] for c in answers["hubs/chat/connections"]["items"]] == [
                    alice.connection_id
                ], answers
                (chat,) = answers["hubs"]["items"]
                assert chat["name"] == "chat" and chat["connections"] == 1, answers
            await api.send_to_connection(alice.connection_id, "end", [7])
            assert (await alice.recv())["target"] == "end"
            await api.close_connection(alice.connection_id, "bye")
            closed = await alice.recv()
            assert closed["type"] == 7 and closed.get("error") == "bye", closed
        # A gateway dies holding a connection; the worker reaps it.
        bob = await RawClient.connect(first.url, token=client_token("bob"))
        assert bob.connection_id is not None
        key = KeySchema(PREFIX).hub("chat").connection(bob.connection_id)
        assert await admin.exists(key)
        first.signal(signal.SIGKILL)

        async def reaped() -> bool:
            return not await admin.exists(key)

        await eventually(reaped, timeout=15)
        denied = await admin.acl_log()
        assert denied == [], denied
        output = deployment.logs()
        assert "NOPERM" not in output and "Traceback" not in output, output
    finally:
        deployment.stop()
        # Shown when the test fails: what each process said, and what Redis refused.
        print(deployment.logs())
        for entry in await admin.acl_log():
            print("ACL LOG:", entry["username"], entry["reason"], entry["object"])


@pytest.mark.parametrize("role", ["gateway", "worker", "service"])
async def test_each_user_can_do_nothing_its_role_does_not_need(
    acl_server: RedisProcess, role: Role
) -> None:
    client = Redis.from_url(user_url(acl_server, role))
    try:
        assert await client.ping()
        await client.set(f"{PREFIX}:probe", "1")  # its own key space: allowed
        forbidden = [
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("KEYS", "*"),
            ("SHUTDOWN",),
            ("ACL", "LIST"),
            ("SCRIPT", "FLUSH"),
            ("FUNCTION", "FLUSH"),
            ("FLUSHDB",),
            ("DEL", "other:key"),
            ("SUBSCRIBE", "x"),
            ("PUBLISH", "x", "y"),
            ("MONITOR",),
            ("GET", "other:key"),  # outside the prefix
        ]
        if role == "gateway":  # only workers consume the publish stream
            forbidden.append(("XREADGROUP", "GROUP", "g", "c", "STREAMS", f"{PREFIX}:p", ">"))
        elif role == "service":  # services neither read inboxes nor reap gateways
            forbidden.append(("XREAD", "STREAMS", f"{PREFIX}:inbox:x", "0"))
            forbidden.append(("XGROUP", "DELCONSUMER", f"{PREFIX}:p", "g", "c"))
        else:  # workers never read a gateway's inbox as a plain reader
            forbidden.append(("XREAD", "STREAMS", f"{PREFIX}:inbox:x", "0"))
            forbidden.append(("EVAL", "return 1", "0"))  # scripts only by SHA
        for command in forbidden:
            with pytest.raises(NoPermissionError):
                await client.execute_command(*command)
        # A script it loads runs with its permissions: no key outside the prefix either.
        sha = await client.script_load("return redis.call('GET', KEYS[1])")
        with pytest.raises(NoPermissionError):
            await client.evalsha(sha, 1, "other:key")
        assert await client.evalsha(sha, 1, f"{PREFIX}:probe") == b"1"
    finally:
        await client.aclose()


def test_the_rules_start_from_nothing() -> None:
    for role in ("gateway", "worker", "service"):
        rule = rules(role, "hubbub")  # type: ignore[arg-type]
        assert rule[:4] == ["resetkeys", "~hubbub:*", "resetchannels", "-@all"]
        assert all(r.startswith("+") and "@" not in r for r in rule[4:])
