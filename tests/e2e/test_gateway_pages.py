"""The pages a gateway serves itself, in headless Chromium cut off from everything but loopback:
Swagger UI at ``/docs`` (hubbub_gateway.apidocs) and, with ``HUBBUB_DEMO_PAGE`` on as under
``hubbub dev``, the demo page at ``/`` (hubbub_gateway.demo); without it, ``/`` is a JSON
index and the demo's token endpoints do not exist.

Real processes: redis-server, gateways and workers from the shared launcher. Screenshots go to
``test-artifacts/screenshots/`` (their paths are printed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from hubbub.sdk.client import HubbubClient
from tests.e2e.browser import (
    LOOPBACK_ONLY,
    Browser,
    chromium_paths,
    describe,
    headless_chromium,
    screenshot,
    wait_for,
)
from tests.support.processes import ACCESS_KEY, Deployment

pytestmark = pytest.mark.e2e


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary, driver = chromium_paths()
    page = headless_chromium(binary, driver, LOOPBACK_ONLY)
    try:
        yield page
    finally:
        page.quit()


def resources_off(page: Browser, origin: str) -> list[str]:
    """Every resource the page loaded that did not come from ``origin``."""
    names: list[str] = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [n for n in names if not n.startswith(origin + "/")]


async def test_front_page_is_a_json_index_and_the_demo_does_not_exist(
    deployment: Deployment,
) -> None:
    gateway = await deployment.start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        front = await http.get("/")
        assert front.status_code == 200
        assert front.headers["content-type"] == "application/json"
        index = front.json()
        assert index["name"] == "Hubbub" and index["version"]
        assert index["links"] == {
            "docs": "/docs",
            "openapi": "/openapi.json",
            "admin": "/admin",
            "health": "/api/health",
        }
        for path in ("/demo/token", "/demo/rest-token"):
            refused = await http.post(path, json={"user": "mallory", "path": "/api/hubs/chat/"})
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["code"] == "Error.Http404"
            assert "token" not in refused.text
        assert (await http.get("/redoc")).status_code == 404  # dropped: /docs only


async def test_docs_render_offline(deployment: Deployment, browser: Browser) -> None:
    gateway = await deployment.start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        html = (await http.get("/docs")).text
        assert "/static/vendor/swagger-ui-bundle.js" in html and "cdn" not in html
        bundle = await http.get("/static/vendor/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.content
    browser.get(f"{gateway.url}/docs")
    try:
        # The operations are rendered from /openapi.json: a summary of ours is in the DOM.
        summaries = wait_for(
            browser,
            lambda p: [
                e.text
                for e in p.find_elements(By.CSS_SELECTOR, ".opblock-summary-description")
                if e.text
            ],
            "Swagger UI shows the operations",
        )
        assert "Invoke a client method and answer its result" in summaries, summaries
        assert "Broadcast" in summaries, summaries
        # The bearer scheme is there for "Try it out".
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize"), describe(browser)
        assert resources_off(browser, gateway.url) == []
    finally:
        screenshot(browser, "docs-offline")


@pytest.fixture
async def demo_stack(deployment: Deployment) -> AsyncIterator[Deployment]:
    """``hubbub dev``'s shape: two gateways with the demo page on, two workers."""
    deployment.extra_env["HUBBUB_DEMO_PAGE"] = "true"
    await deployment.start_gateway()
    await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    yield deployment


def messages(page: Browser) -> list[str]:
    return [e.text for e in page.find_elements(By.CSS_SELECTOR, "#messages li.message")]


def has_message(text: str):  # type: ignore[no-untyped-def]
    return lambda p: text in messages(p)


def state(page: Browser, name: str) -> str | None:
    value: str | None = page.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}")
    return value


async def test_demo_page_receives_joins_and_sends(demo_stack: Deployment, browser: Browser) -> None:
    a, b = demo_stack.gateways
    page = browser
    page.get(f"{a.url}/")
    try:
        page.find_element(By.ID, "user").send_keys("dana")
        page.find_element(By.ID, "connect").click()
        wait_for(page, lambda p: state(p, "state") == "connected", "dana connected")

        # The test sends through the *other* gateway: the message crosses Redis and a worker.
        async with HubbubClient(b.url, ACCESS_KEY, "chat") as api:
            await api.send_to_user("dana", "newMessage", ["hello dana, via gateway B"])
            wait_for(page, has_message("hello dana, via gateway B"), "the page shows it")

            group = page.find_element(By.ID, "group")
            group.clear()
            group.send_keys("vip")
            page.find_element(By.ID, "join").click()
            wait_for(page, lambda p: state(p, "groups") == "vip", "joined vip")
            await api.send_to_group("vip", "newMessage", ["vip news <b>not bold</b>"])
            wait_for(page, has_message("vip news <b>not bold</b>"), "the page shows the group's")
            assert not page.find_elements(By.CSS_SELECTOR, "#messages b")  # text, not markup

        # The page's own send goes through the REST API, with a token for that URL only.
        Select(page.find_element(By.ID, "to")).select_by_value("group")
        page.find_element(By.ID, "to-name").send_keys("vip")
        page.find_element(By.ID, "text").send_keys("from the page")
        page.find_element(By.ID, "send").click()
        wait_for(page, has_message("from the page"), "the page's own send comes back")
        sent = page.find_element(By.ID, "sent").text
        assert sent.startswith("accepted: "), sent
        assert resources_off(page, a.url) == []
    finally:
        screenshot(page, "demo-page")


async def test_demo_endpoints_refuse_other_origins_and_other_paths(demo_stack: Deployment) -> None:
    gateway = demo_stack.gateways[0]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "signalr.min.js" in page.text

        own = {"Origin": gateway.url}
        token = await http.post("/demo/token", json={"user": "dana"}, headers=own)
        assert token.status_code == 200 and token.json()["hub"] == "chat"
        # The client token opens a connection (negotiate accepts it) ...
        negotiated = await http.post(
            "/hubs/chat/negotiate", headers={"Authorization": f"Bearer {token.json()['token']}"}
        )
        assert negotiated.status_code == 200, negotiated.text
        # ... but a page of another origin gets nothing from the demo endpoints.
        for path, body in (("/demo/token", {"user": "x"}), ("/demo/rest-token", {"path": "/"})):
            foreign = await http.post(path, json=body, headers={"Origin": "https://evil.example"})
            assert foreign.status_code == 403, foreign.text
            assert foreign.json()["code"] == "Error.Demo.ForeignOrigin"
        # Nor does a page of a site that rebound its name to this gateway (DNS rebinding):
        # same origin to the browser, its own name in Host.
        port = httpx.URL(gateway.url).port
        for host in (f"rebind.example:{port}", "rebind.example"):
            rebound = await http.post(
                "/demo/token",
                json={"user": "x"},
                headers={"Host": host, "Origin": f"http://{host}"},
            )
            assert rebound.status_code == 403, rebound.text
            assert rebound.json()["code"] == "Error.Demo.ForeignOrigin"
        for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"):
            local = await http.post("/demo/token", json={"user": "x"}, headers={"Host": host})
            assert local.status_code == 200, (host, local.text)

        # REST tokens only for the demo hub's REST paths.
        for path in ("/api/hubs/other/:send", "/metrics", "/api/hubs/chat/:send?x=1"):
            refused = await http.post("/demo/rest-token", json={"path": path}, headers=own)
            assert refused.status_code == 400, (path, refused.text)
            assert refused.json()["code"] == "Error.InvalidRequest"
        rest = await http.post("/demo/rest-token", json={"path": "/api/hubs/chat/:send"})
        assert rest.status_code == 200
        bearer = {"Authorization": f"Bearer {rest.json()['token']}"}
        sent = await http.post(
            "/api/hubs/chat/:send", json={"target": "t", "arguments": []}, headers=bearer
        )
        assert sent.status_code == 202, sent.text
        # The token's audience is that URL: another path refuses it.
        other = await http.post(
            "/api/hubs/chat/users/u/:send", json={"target": "t", "arguments": []}, headers=bearer
        )
        assert other.status_code == 401, other.text
