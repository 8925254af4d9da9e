"""The example chat (examples/chat) in two headless Chromium browsers, end to end.

Real processes: redis-server, two gateways, two fan-out workers, the example service
(``python -m examples.chat``, the upstream SDK inside its FastAPI lifespan) and two browsers
running the page with the official ``@microsoft/signalr`` browser build. Each page gets a token
for a different gateway, so every line one page sees from the other crossed Redis and a worker
in both directions: page → gateway → upstream stream → service → publish stream → worker →
the other gateway → the other page. Every wait is on the DOM; screenshots go to
``artifacts/`` (``$HUBBUB_ARTIFACTS``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from hubbub.dev.embedded import free_port
from hubbub.dev.launcher import ChildProcess, start_process
from tests.e2e.browser import (
    REPO,
    Browser,
    artifacts_dir,
    chromium_paths,
    describe,
    headless_chromium,
    wait_for,
)
from tests.support.processes import Deployment

pytestmark = pytest.mark.e2e

CHAT_DIR = REPO / "examples" / "chat"
BUNDLE = CHAT_DIR / "node_modules" / "@microsoft" / "signalr" / "dist" / "browser"


@pytest.fixture(scope="session", autouse=True)
def _signalr_bundle() -> None:
    """The example serves the official browser build from its node_modules: install it from
    the lock file once, as its README says (``npm ci`` in examples/chat)."""
    if (BUNDLE / "signalr.min.js").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is required to install @microsoft/signalr for the example chat")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=CHAT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {CHAT_DIR} failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class ChatService:
    process: ChildProcess
    url: str


@pytest.fixture
async def chat(deployment: Deployment, tmp_path: Path) -> AsyncIterator[ChatService]:
    """Two gateways that accept the example's page origin (and only it), two workers, and the
    example service pointed at both gateways."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    deployment.extra_env["HUBBUB_CORS_ORIGINS"] = json.dumps([origin])
    await deployment.start_gateway()
    await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    env = deployment.env(
        CHAT_GATEWAY_URLS=",".join(g.url for g in deployment.gateways),
        CHAT_HOST="127.0.0.1",
        CHAT_PORT=str(port),
        PYTHONPATH=str(REPO),
    )
    service = start_process(
        "chat",
        [sys.executable, "-m", "examples.chat"],
        env=env,
        log=tmp_path / "chat.log",
        port=port,
    )
    try:
        await service.wait_healthy(30.0, path="/healthz")
        # A gateway sends invocations upstream only once its heartbeat has seen a live service
        # (before that it answers them at once with an error): wait until every gateway has.
        await deployment.upstream_services_seen()
        yield ChatService(service, origin)
    finally:
        service.stop()
        print(f"----- chat service -----\n{service.output()[-6000:]}")


@pytest.fixture
def browsers() -> Iterator[list[Browser]]:
    binary, driver = chromium_paths()
    opened: list[Browser] = []

    def close_all() -> None:
        for browser in opened:
            try:
                browser.quit()
            except Exception:  # already gone: the test may quit one itself
                pass

    try:
        opened.append(headless_chromium(binary, driver))
        opened.append(headless_chromium(binary, driver))
        yield opened
    finally:
        close_all()


def body(page: Browser, attribute: str) -> str | None:
    value: str | None = page.find_element(By.TAG_NAME, "body").get_attribute(f"data-{attribute}")
    return value


def sign_in(page: Browser, url: str, user: str) -> None:
    page.get(url)
    page.find_element(By.ID, "name").send_keys(user)
    page.find_element(By.ID, "connect").click()
    wait_for(page, lambda p: body(p, "state") == "connected", f"{user} connected")


def join(page: Browser, room: str) -> None:
    field = page.find_element(By.ID, "room")
    field.clear()
    field.send_keys(room)
    page.find_element(By.ID, "join-button").click()
    wait_for(page, lambda p: body(p, "room") == room, f"joined #{room}")


def say(page: Browser, text: str) -> None:
    page.find_element(By.ID, "text").send_keys(text)
    page.find_element(By.ID, "send-button").click()


def lines(page: Browser, kind: str) -> list[str]:
    return [e.text for e in page.find_elements(By.CSS_SELECTOR, f"#messages li.{kind}")]


def has_line(kind: str, text: str):  # type: ignore[no-untyped-def]
    return lambda p: text in lines(p, kind)


def online(page: Browser) -> list[str]:
    return [e.text for e in page.find_elements(By.CSS_SELECTOR, "#online li")]


def screenshot(page: Browser, name: str) -> None:
    try:
        page.save_screenshot(str(artifacts_dir() / f"{name}.png"))
    except Exception as exc:  # a screenshot never hides the test's own outcome
        print(f"screenshot {name} failed: {exc!r}")


async def test_two_browsers_chat_through_the_example_service(
    browsers: list[Browser], chat: ChatService
) -> None:
    alice, bob = browsers
    try:
        # The page and the official browser bundle come from the example service itself.
        async with httpx.AsyncClient() as http:
            bundle = await http.get(f"{chat.url}/vendor/signalr.min.js")
        assert bundle.status_code == 200 and b"HubConnectionBuilder" in bundle.content

        sign_in(alice, chat.url, "alice")
        sign_in(bob, chat.url, "bob")
        # Tokens go to the gateways in turn: each page is on its own gateway.
        assert body(alice, "gateway") != body(bob, "gateway"), describe(alice)

        # Who is online: bob's page asked online() once connected; alice's got the "online"
        # push the service sent when bob connected, and the system line.
        wait_for(bob, lambda p: online(p) == ["alice", "bob"], "bob sees alice and bob online")
        wait_for(alice, lambda p: online(p) == ["alice", "bob"], "alice sees bob online")
        wait_for(alice, has_line("system", "bob joined"), "alice sees 'bob joined'")

        join(alice, "lobby")
        wait_for(alice, has_line("system", "alice joined #lobby"), "alice sees her join line")
        join(bob, "lobby")
        wait_for(alice, has_line("system", "bob joined #lobby"), "alice sees bob join #lobby")
        wait_for(bob, has_line("system", "bob joined #lobby"), "bob sees his join line")

        say(alice, "hello from alice <b>not bold</b>")
        wait_for(
            bob,
            has_line("message", "alice: hello from alice <b>not bold</b>"),
            "bob sees alice's message",
        )
        # Shown as text, never as markup.
        assert not bob.find_elements(By.CSS_SELECTOR, "#messages b")
        say(bob, "hi alice")
        wait_for(alice, has_line("message", "bob: hi alice"), "alice sees bob's reply")
        # Each saw both lines, in the order they were sent.
        both = ["alice: hello from alice <b>not bold</b>", "bob: hi alice"]
        assert lines(alice, "message") == both
        assert lines(bob, "message") == both
        screenshot(alice, "chat-alice")
        screenshot(bob, "chat-bob")

        # A room is a group: bob leaves #lobby for #games and no longer gets #lobby's lines.
        join(bob, "games")
        wait_for(alice, has_line("system", "bob left #lobby"), "alice sees bob leave #lobby")
        say(alice, "anyone still here?")
        wait_for(alice, has_line("message", "alice: anyone still here?"), "alice's own line")
        say(bob, "games only")
        wait_for(bob, has_line("message", "bob: games only"), "bob's line in #games")
        assert "alice: anyone still here?" not in lines(bob, "message")
        assert "bob: games only" not in lines(alice, "message")

        # A handler's HubError is the page's invoke() error, as the service worded it.
        error = bob.execute_async_script(
            """const done = arguments[arguments.length - 1];
            connection.invoke("sendMessage", "lobby", "sneaky").then(
              () => done("resolved"), (err) => done(err.message));"""
        )
        assert "join #lobby before you send to it" in error, error

        # bob closes his browser: the disconnected event reaches the service, which tells
        # everyone (system line, online list).
        bob.quit()
        wait_for(alice, has_line("system", "bob left"), "alice sees 'bob left'")
        wait_for(alice, lambda p: online(p) == ["alice"], "alice alone online")
    finally:
        screenshot(alice, "chat-alice-final")
