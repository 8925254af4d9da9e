"""The admin console (/admin) in headless Chromium against a real deployment: two gateways,
a worker, three SignalR connections. The page asks for a token, then shows both gateways, the
connection count the test made, the worker's partitions with their lag, the hub, a search and
this gateway's refusals. Screenshots go to ``test-artifacts/screenshots/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from hubbub.tokens import mint_token
from tests.e2e.browser import REPO, Browser, chromium_paths, headless_chromium, wait_for
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.e2e

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


@pytest.fixture
def browser() -> Iterator[Browser]:
    driver = headless_chromium(*chromium_paths())
    driver.set_window_size(1100, 2400)  # the whole page in each screenshot
    yield driver
    driver.quit()


def shot(driver: Browser, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"admin-{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


def text(driver: Browser, element_id: str) -> str:
    """An element's text, read in the page (the tables are redrawn every 2 s, which makes
    element handles go stale between two WebDriver calls)."""
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent",
                                     element_id))  # fmt: skip


def rows(driver: Browser, tbody: str) -> list[list[str]]:
    found: list[list[str]] = driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).rows)"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent))",
        tbody,
    )
    return found


def state(driver: Browser) -> str:
    return str(driver.execute_script("return document.body.dataset.state"))


def shown_gateways(driver: Browser) -> set[str]:
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#gateways tr')).map(tr => tr.dataset.gateway)"
    )
    return set(found)


async def test_the_console_shows_the_deployment(deployment: Deployment, browser: Browser) -> None:
    first = await deployment.start_gateway()
    second = await deployment.start_gateway()
    deployment.start_worker()
    clients = [
        await RawClient.connect(first.url, token=client_token("alice")),
        await RawClient.connect(first.url, token=client_token("bob")),
        await RawClient.connect(second.url, token=client_token("carol")),
    ]
    try:
        browser.get(f"{first.url}/admin")
        wait_for(browser, lambda d: state(d) == "need-token", "the page asks for a token")
        command = text(browser, "command")
        assert f"--audience {first.url}/api/admin" in command, command
        shot(browser, "1-token")

        token = mint_token(ACCESS_KEY, f"{first.url}/api/admin")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()

        ids = {f"{deployment.prefix}-gw1", f"{deployment.prefix}-gw2"}

        def gateways_shown(d: Browser) -> bool:
            # Each gateway reports its connections with its heartbeat (every 0.5 s here).
            return shown_gateways(d) == ids and text(d, "connections-total") == "3"

        wait_for(browser, gateways_shown, "both gateways and 3 connections")
        assert text(browser, "gateways-live") == "2"
        by_id = {r[0].removesuffix(" (this one)"): r for r in rows(browser, "gateways")}
        assert by_id[f"{deployment.prefix}-gw1"][1:3] == ["2", "live"], by_id
        assert by_id[f"{deployment.prefix}-gw2"][1:3] == ["1", "live"], by_id

        # The worker holds all 16 partitions; each shows its lag and pending.
        def partitions_held(d: Browser) -> bool:
            table = rows(d, "partitions")
            return len(table) == 16 and all(r[1] == "worker1" for r in table)

        wait_for(browser, partitions_held, "16 partitions held by worker1")
        table = rows(browser, "partitions")
        assert all(r[2].isdigit() and r[3].isdigit() for r in table), table
        lag = text(browser, "total-lag")
        assert lag == str(sum(int(r[2]) for r in table)), (lag, table)
        workers = rows(browser, "workers")
        assert len(workers) == 1 and workers[0][0] == "worker1", workers
        assert workers[0][1] == ", ".join(str(n) for n in range(16)), workers
        wait_for(browser, lambda d: ["chat", "3", "0", "3"] in rows(d, "hubs"), "hub chat")
        shot(browser, "2-deployment")

        # Search: the hub's connections, with their users and gateways.
        browser.find_element(By.ID, "search-hub").send_keys("chat")
        browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
        wait_for(browser, lambda d: len(rows(d, "results")) == 3, "3 connections found")
        found = {(r[0], r[1], r[2]) for r in rows(browser, "results")}
        assert found == {
            (clients[0].connection_id, "alice", f"{deployment.prefix}-gw1"),
            (clients[1].connection_id, "bob", f"{deployment.prefix}-gw1"),
            (clients[2].connection_id, "carol", f"{deployment.prefix}-gw2"),
        }, found

        # A refusal on this gateway shows among its recent refusals.
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{first.url}/api/hubs/chat/groups")
            assert r.status_code == 401, r.text

        def refused(d: Browser) -> bool:
            return any(
                r[1:4] == ["401", "Error.Unauthorized", "/api/hubs/chat/groups"]
                for r in rows(d, "refusals")
            )

        wait_for(browser, refused, "the refusal listed")
        shot(browser, "3-search-refusals")

        # The token stays for the tab: a reload shows the data without asking again.
        browser.refresh()
        wait_for(browser, gateways_shown, "the data again after a reload")
        # A refused token brings the prompt back, with why.
        browser.execute_script("sessionStorage.setItem('hubbub.adminToken', 'nonsense')")
        browser.refresh()
        wait_for(browser, lambda d: state(d) == "need-token", "the prompt after a bad token")
        assert text(browser, "status"), "the page says why"
    finally:
        for client in clients:
            await client.close()
