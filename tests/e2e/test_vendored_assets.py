"""The browser files the gateway serves (``hubbub_gateway/static/vendor``) are the npm
packages' own, byte for byte, at the versions pinned in ``tests/e2e/node/package-lock.json``
(``static/vendor/README.md`` says which file comes from where)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubbub_gateway.apidocs import STATIC
from tests.e2e.nodeclient import NODE_DIR, ensure_node_modules

VENDOR = STATIC / "vendor"
# vendored file -> (npm package, path inside it)
FILES = {
    "swagger-ui-bundle.js": ("swagger-ui-dist", "swagger-ui-bundle.js"),
    "swagger-ui.css": ("swagger-ui-dist", "swagger-ui.css"),
    "favicon-32x32.png": ("swagger-ui-dist", "favicon-32x32.png"),
    "signalr.min.js": ("@microsoft/signalr", "dist/browser/signalr.min.js"),
}


@pytest.fixture(scope="module")
def node_modules() -> Path:
    ensure_node_modules()  # npm ci from the lock file when a package is missing
    return NODE_DIR / "node_modules"


@pytest.mark.parametrize("name", sorted(FILES))
def test_vendored_file_is_the_npm_packages(node_modules: Path, name: str) -> None:
    package, inside = FILES[name]
    original = node_modules / package / inside
    assert (VENDOR / name).read_bytes() == original.read_bytes(), (
        f"static/vendor/{name} differs from {package}'s {inside}: copy it again"
    )


def test_the_readme_names_the_locked_versions(node_modules: Path) -> None:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    readme = (VENDOR / "README.md").read_text()
    for package in {p for p, _ in FILES.values()}:
        version = lock[f"node_modules/{package}"]["version"]
        assert f"`{package}` {version}" in readme, (package, version)
        # What npm installed is what the lock file pins (a stale node_modules would lie).
        installed = json.loads((node_modules / package / "package.json").read_text())["version"]
        assert installed == version, (package, installed, version)
