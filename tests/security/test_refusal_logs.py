"""Refusals log one WARNING line without a traceback, rate-limited (issue 9, item 10).

Against a real gateway process: one refused request is one line with its reason; a storm of
them (a reconnect storm with expired tokens) is a burst of lines and then a count, not a flood.
"""

from __future__ import annotations

import asyncio

import httpx
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.logs import REFUSALS
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment, eventually

BURST = 20


def refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if f" {REFUSALS}: " in line]


async def test_one_refusal_is_one_warning_line_with_its_reason(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    expired = mint_token(ACCESS_KEY, "http://test/client", minutes=-5, user_id="u")
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{gateway.url}/hubs/chat/negotiate", headers={"Authorization": f"Bearer {expired}"}
        )
    assert r.status_code == 401 and r.json() == {
        "code": "Error.Unauthorized",
        "message": "token has expired",
    }
    lines = refusal_lines(gateway.output())
    assert len(lines) == 1, lines
    assert " WARNING " in lines[0]
    assert "POST /hubs/chat/negotiate: 401 Error.Unauthorized: token has expired" in lines[0]
    # The same refusal at the upgrade: one more line, from the app, with its reason.
    url = gateway.url.replace("http://", "ws://") + f"/hubs/chat?access_token={expired}"
    try:
        ws = await websockets.connect(url, ping_interval=None)
        await ws.close()
        raise AssertionError("an expired token opened a WebSocket")
    except InvalidStatus as refused:
        assert refused.response.status_code == 401
    lines = refusal_lines(gateway.output())
    assert len(lines) == 2, lines
    assert "upgrade refused: 401 Error.Unauthorized: token has expired" in lines[1]
    assert "Traceback" not in gateway.output()


async def test_a_storm_of_refusals_is_a_burst_then_a_count(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway(
        HUBBUB_REFUSAL_LOG_BURST=str(BURST), HUBBUB_REFUSAL_LOG_PER_SECOND="1"
    )
    expired = mint_token(ACCESS_KEY, "http://test/client", minutes=-5, user_id="u")
    storm = 300
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {expired}"},
        limits=httpx.Limits(max_connections=20),
    ) as http:
        answers = await asyncio.gather(
            *(http.post(f"{gateway.url}/hubs/chat/negotiate") for _ in range(storm))
        )
        elapsed = loop.time() - started
        assert [r.status_code for r in answers] == [401] * storm
        lines = refusal_lines(gateway.output())
        # The burst, and what the rate let through while the storm lasted.
        assert BURST <= len(lines) <= BURST + int(elapsed) + 2, (len(lines), elapsed)
        # Once the bucket refills (the rate is time itself), the next line let through says
        # how many were dropped: refuse one at a time until such a line comes after the storm.
        sent = storm
        reports = gateway.output().count("more refusals not logged)")

        async def reported() -> bool:
            nonlocal sent
            r = await http.post(f"{gateway.url}/hubs/chat/negotiate")
            assert r.status_code == 401, r.text
            sent += 1
            return gateway.output().count("more refusals not logged)") > reports

        await eventually(reported, timeout=10, interval=0.1)
    lines = refusal_lines(gateway.output())
    dropped = [line for line in lines if "more refusals not logged)" in line]
    counted = sum(int(line.rsplit("(", 1)[1].split()[0]) for line in dropped)
    assert len(lines) + counted == sent, (len(lines), counted, sent)
    assert "Traceback" not in gateway.output()
