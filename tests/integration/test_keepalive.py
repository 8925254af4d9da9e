"""Keep-alive Pings, the client timeout, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.processes import Deployment
from tests.support.rawclient import RS, RawClient, client_token


async def test_ping_when_idle_and_close_when_client_is_silent(deployment: Deployment) -> None:
    deployment.extra_env.update(HUBBUB_KEEPALIVE_INTERVAL="1", HUBBUB_CLIENT_TIMEOUT="3")
    gateway = await deployment.start_gateway()
    silent = await RawClient.connect(gateway.url)
    talker = await RawClient.connect(gateway.url)

    async def keep_talking() -> None:
        while True:
            await talker.send({"type": 6})
            await asyncio.sleep(0.5)

    chatter = asyncio.create_task(keep_talking())
    try:
        records = []
        while True:
            frame = await asyncio.wait_for(silent.ws.recv(), 10)
            data = frame.encode() if isinstance(frame, str) else frame
            records += [orjson.loads(r) for r in data.split(RS) if r]
            if records[-1]["type"] == 7:
                break
        assert {"type": 6} in records, records  # pinged while idle
        assert records[-1] == {
            "type": 7,
            "error": "Server timeout elapsed without receiving a message from the client.",
        }
        await silent.ws.wait_closed()
        # The client that kept sending Pings outlived the timeout.
        assert talker.ws.state.name == "OPEN"
    finally:
        chatter.cancel()
        await talker.close()


async def test_tokens_and_ids_are_redacted_from_logs(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    token = client_token("secretive")
    client = await RawClient.connect(gateway.url, token=token)
    await client.close()
    deployment.stop()
    log = gateway.output()
    assert "access_token=***" in log
    assert token not in log
    assert client.connection_id
    assert f"id={client.connection_id}" not in log


async def test_json_logs_carry_ids_and_trace(deployment: Deployment) -> None:
    deployment.extra_env.update(HUBBUB_LOG_FORMAT="json", HUBBUB_LOG_LEVEL="DEBUG")
    gateway = await deployment.start_gateway()
    client = await RawClient.connect(gateway.url, token=client_token("json"))
    await client.close()
    deployment.stop()
    lines = [orjson.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
    assert lines, gateway.output()[-2000:]
    assert all(line["gateway_id"] == f"{deployment.prefix}-gw1" for line in lines)
    opened = [
        line
        for line in lines
        if line["message"] == "connection open" and line["logger"] == "hubbub.gateway.connect"
    ]
    assert opened and opened[0]["connection_id"] == client.connection_id
    assert not any(client_token("json") in line["message"] for line in lines)
