"""Headless Chromium for the browser tests, through Selenium and the system's chromedriver.

The browser is Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when
missing); ``CHROMIUM_BINARY`` / ``CHROMEDRIVER`` point elsewhere. A missing browser is a test
failure, never a skip: a browser test that quietly does not run proves nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
# /usr/bin/chromium is Debian's wrapper script; the binary itself takes the options directly.
_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
Browser = webdriver.Chrome
INSTALL_HINT = "apt-get install chromium chromium-driver (what .ci/run does)"


def _find(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def chromium_paths() -> tuple[str, str]:
    """The browser binary and its driver; fails the test when either is missing."""
    binary = os.environ.get("CHROMIUM_BINARY") or _find(_BINARIES)
    driver = os.environ.get("CHROMEDRIVER") or _find(("chromedriver",))
    if binary is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", binary), ("chromedriver", driver)) if not path
        )
        pytest.fail(f"{missing} not found: {INSTALL_HINT}", pytrace=False)
    return binary, driver


# Chromium options that leave it only this machine's loopback: every host name but 127.0.0.1
# fails to resolve, and anything else would go to a proxy that is not there. A page that
# needs a CDN then breaks, as it would offline.
LOOPBACK_ONLY = (
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
)


def headless_chromium(binary: str, driver: str, extra: tuple[str, ...] = ()) -> Browser:
    """A fresh headless browser (its own profile: pages of two of them share nothing);
    ``extra``: more command-line options (e.g. :data:`LOOPBACK_ONLY`)."""
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,800",
        "--no-first-run",
        "--disable-extensions",
        *extra,
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def artifacts_dir() -> Path:
    """Where screenshots go: ``$HUBBUB_ARTIFACTS``, else ``artifacts/`` at the repository root
    (git-ignored; the directory a CI job keeps)."""
    path = Path(os.environ.get("HUBBUB_ARTIFACTS") or REPO / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page: Browser, name: str) -> Path | None:
    """Save the page as ``test-artifacts/screenshots/<name>.png`` at the repository root
    (git-ignored; ``$HUBBUB_ARTIFACTS/screenshots`` when set), print and return its path.
    A failed screenshot never hides the test's own outcome."""
    base = os.environ.get("HUBBUB_ARTIFACTS")
    folder = Path(base) / "screenshots" if base else REPO / "test-artifacts" / "screenshots"
    path = folder / f"{name}.png"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        page.save_screenshot(str(path))
    except Exception as exc:
        print(f"screenshot {name} failed: {exc!r}")
        return None
    print(f"screenshot: {path}")
    return path


def describe(driver: Browser) -> str:
    """What the page shows and logged, for a failure message."""
    try:
        body = driver.find_element("tag name", "body")
        state = {k: body.get_attribute(f"data-{k}") for k in ("state", "user", "room", "gateway")}
        console = "\n".join(
            f"  {entry.get('level')} {entry.get('message')}"
            for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]
        )
        return f"page {state}:\n{body.text}\nconsole:\n{console}"
    except Exception as exc:  # the page itself may be what broke
        return f"(page unreadable: {exc!r})"


def wait_for(
    driver: Browser, condition: Callable[[Browser], Any], what: str, timeout: float = 20.0
) -> Any:
    """Wait on a DOM condition (polled by WebDriverWait); fail with the page's state."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail(f"{what}: not within {timeout:g} s\n{describe(driver)}", pytrace=False)
