"""One Redis endpoint for both clients, over mutual TLS against a real ``redis-server``.

The server requires a client certificate (``--tls-auth-clients yes``), so a client that
ignored the endpoint's certificate, key or CA could not talk to it at all.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from hubbub.dev.embedded import find_server_binary, free_port
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(where: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    assert shutil.which("openssl"), "the TLS test needs the openssl command"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-subj", "/CN=hubbub-test-ca", "-days", "1", cwd=where)  # fmt: skip
    (where / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=where)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", *ext,
                 cwd=where)  # fmt: skip
    # A second CA that signed nothing here: trusting it must fail verification.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
             "-out", "other.crt", "-subj", "/CN=other-ca", "-days", "1", cwd=where)  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    where = tmp_path_factory.mktemp("tls")
    _certificates(where)
    port = free_port()
    process = subprocess.Popen(
        [find_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(where)],
        cwd=where, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    # The server says when it listens; its log goes to stdout, read line by line until then.
    assert process.stdout is not None
    seen = []
    for raw in process.stdout:
        seen.append(raw.decode(errors="replace"))
        if "Ready to accept connections" in seen[-1]:
            break
    else:
        raise AssertionError("redis-server with TLS exited:\n" + "".join(seen))
    yield port, where
    process.terminate()
    process.communicate(timeout=10)  # drains the rest of its log


def endpoint(port: int, where: Path, **overrides: Any) -> RedisEndpoint:
    base = RedisEndpoint(
        url=f"rediss://127.0.0.1:{port}/0",
        name="tls-test",
        tls_ca_file=str(where / "ca.crt"),
        tls_cert_file=str(where / "client.crt"),
        tls_key_file=str(where / "client.key"),
        connect_timeout=2.0,
        timeout=2.0,
    )
    return dataclasses.replace(base, **overrides)


async def test_pipe_and_redis_py_share_the_mutual_tls_endpoint(
    tls_server: tuple[int, Path],
) -> None:
    port, where = tls_server
    ep = endpoint(port, where)
    pipe = Pipe(ep)
    redis = ep.redis()
    try:
        assert await pipe.execute("SET", "tls:key", "from-pipe") == b"OK"
        assert await redis.get("tls:key") == b"from-pipe"
        names = (await redis.execute_command("CLIENT", "LIST")).decode()
        assert names.count("name=tls-test") == 2  # both clients, named by the one endpoint
    finally:
        await pipe.aclose()
        await redis.aclose()


@pytest.mark.parametrize(
    ("broken", "overrides"),
    [
        ("no client certificate", {"tls_cert_file": None, "tls_key_file": None}),
        ("a CA that did not sign the server", {"tls_ca_file": "other.crt"}),
    ],
)
async def test_a_wrong_tls_setting_is_refused_by_both_clients(
    tls_server: tuple[int, Path], broken: str, overrides: dict[str, Any]
) -> None:
    port, where = tls_server
    if overrides.get("tls_ca_file"):
        overrides = {**overrides, "tls_ca_file": str(where / str(overrides["tls_ca_file"]))}
    ep = endpoint(port, where, retries=0, **overrides)
    pipe = Pipe(ep)
    redis = ep.redis()
    try:
        with pytest.raises(RedisConnectionError):
            await pipe.execute("PING")
        with pytest.raises(RedisConnectionError):
            await redis.ping()
    finally:
        await pipe.aclose()
        await redis.aclose()


async def test_plain_url_does_not_use_tls(tls_server: tuple[int, Path]) -> None:
    """Without ``rediss://`` the endpoint makes no TLS context, whatever files are set."""
    port, where = tls_server
    assert endpoint(port, where, url=f"redis://127.0.0.1:{port}/0").ssl_context() is None
    assert endpoint(port, where).ssl_context() is not None
