"""docs/python-clients.md's examples are tests: each Python block of the guide is one file of
``examples/python/`` (its first line names it), quoted exactly, and the files run as the guide
says against real processes (redis-server, two gateways, two workers): the pysignalr and
signalrcore listeners receive what ``send.py`` sends through HubbubClient and Publisher.

A changed block without its file (or the other way round) fails the first test; a file that
no longer works against Hubbub fails the second.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbub.dev.launcher import ChildProcess, start_process
from tests.support.processes import ACCESS_KEY, Deployment

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "python-clients.md"
EXAMPLES = REPO / "examples" / "python"
BLOCK = re.compile(r"```python\n# (examples/python/[\w.]+\.py)\n(.*?)```", re.S)


def quoted() -> dict[str, str]:
    """Each quoted file's path -> its text as the guide shows it (without the path line)."""
    return {path: text for path, text in BLOCK.findall(GUIDE.read_text())}


def test_the_guide_quotes_every_example_exactly() -> None:
    blocks = quoted()
    files = {str(p.relative_to(REPO)) for p in EXAMPLES.glob("*.py")}
    assert set(blocks) == files
    for path, text in blocks.items():
        assert text == (REPO / path).read_text(), f"{path} differs from its block in {GUIDE}"
    guide = GUIDE.read_text()
    assert "/tmp/" not in guide  # nothing outside the repository


async def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (at most 60 s); it must succeed."""
    done = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def start(name: str, script: str, env: dict[str, str], tmp_path: Path) -> ChildProcess:
    return start_process(
        name, [sys.executable, str(EXAMPLES / script)], env=env, log=tmp_path / f"{name}.log"
    )


def wait_for_line(child: ChildProcess, text: str, timeout: float = 30.0) -> None:
    """Until the child printed ``text`` (its log file is polled; no event says so)."""
    deadline = time.monotonic() + timeout
    while text not in child.output():
        if child.returncode is not None:
            pytest.fail(f"{child.name} exited ({child.returncode}):\n{child.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{child.name} did not print {text!r}:\n{child.output()}")
        time.sleep(0.05)


async def test_the_examples_run_against_a_real_stack(cluster: Deployment, tmp_path: Path) -> None:
    a, b = cluster.gateways
    # As the guide says: the token from `hubbub token` (the CLI in this environment).
    hubbub = str(Path(sys.executable).with_name("hubbub"))
    token = (
        await run([hubbub, "token", "--access-key", ACCESS_KEY, "--user", "alice",
                   "--role", "hubbub.joinLeaveGroup"], cluster.env())
    ).stdout.strip()  # fmt: skip
    env = {**cluster.env(HUBBUB_URL=b.url), "TOKEN": token}
    alice = start("pysignalr", "pysignalr_listen.py", {**env, "COUNT": "3"}, tmp_path)
    bob = start("signalrcore", "signalrcore_listen.py", {**env, "COUNT": "2"}, tmp_path)
    try:
        await asyncio.to_thread(wait_for_line, alice, "listening in group vip")
        await asyncio.to_thread(wait_for_line, bob, "listening in group vip")
        sender = await run(
            [sys.executable, str(EXAMPLES / "send.py")], cluster.env(HUBBUB_URL=a.url)
        )
        assert re.fullmatch(r"sent \S+\npublished \S+\n", sender.stdout), sender.stdout

        # Each listener exits 0 after COUNT messages, having printed them in order.
        for child in (alice, bob):
            await asyncio.to_thread(child.process.wait, 30)
            assert child.returncode == 0, child.output()
        group = ["newMessage vip news, over REST", "newMessage vip news, from Publisher"]
        got_alice = [ln for ln in alice.output().splitlines() if ln.startswith("newMessage")]
        # Order holds per target (the group's two messages), not across targets.
        assert [ln for ln in got_alice if "vip" in ln] == group, alice.output()
        assert sorted(got_alice) == sorted(["newMessage hi alice, over REST", *group])
        got_bob = [ln for ln in bob.output().splitlines() if ln.startswith("newMessage")]
        assert got_bob == group, bob.output()
    finally:
        alice.stop(5)
        bob.stop(5)
