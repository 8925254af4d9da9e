"""The worker's tiny scheduler: each job on its own interval, in order, a failing one retried.

A fake clock drives it, so nothing here sleeps."""

from __future__ import annotations

import pytest

from hubbub_fanout.supervisor import Periodic, Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recording(runs: list[str], name: str, fail: list[bool] | None = None) -> Periodic:
    async def job() -> None:
        if fail and fail[0]:
            raise RuntimeError(name)
        runs.append(name)

    return Periodic(name, {"fast": 1.0, "slow": 5.0}.get(name, 2.0), job)


async def test_every_job_runs_at_the_first_turn_then_on_its_interval() -> None:
    clock, runs = Clock(), []
    schedule = Schedule([recording(runs, "fast"), recording(runs, "slow")], clock=clock)
    await schedule.run_due()
    assert runs == ["fast", "slow"]
    for step, expected in [(0.5, []), (0.5, ["fast"]), (1.0, ["fast"]), (3.0, ["fast", "slow"])]:
        runs.clear()
        clock.now += step
        await schedule.run_due()
        assert runs == expected, clock.now


async def test_a_late_turn_runs_a_job_once_not_once_per_missed_interval() -> None:
    clock, runs = Clock(), []
    schedule = Schedule([recording(runs, "fast")], clock=clock)
    await schedule.run_due()
    clock.now += 10.0
    await schedule.run_due()
    await schedule.run_due()
    assert runs == ["fast", "fast"]


async def test_the_interval_counts_from_when_the_job_started() -> None:
    clock, runs = Clock(), []

    async def slow_job() -> None:
        runs.append("lease")
        clock.now += 0.4  # the job itself takes time

    schedule = Schedule([Periodic("lease", 1.0, slow_job)], clock=clock)
    await schedule.run_due()
    clock.now = 101.0  # started at 100.0: due again, though it ended at 100.4
    await schedule.run_due()
    assert runs == ["lease", "lease"]


async def test_a_failing_job_stays_due_and_holds_back_the_jobs_after_it() -> None:
    clock, runs, fail = Clock(), [], [True]
    schedule = Schedule(
        [recording(runs, "fast"), recording(runs, "flaky", fail), recording(runs, "slow")],
        clock=clock,
    )
    with pytest.raises(RuntimeError):
        await schedule.run_due()
    assert runs == ["fast"]
    fail[0] = False
    clock.now += 0.1  # the caller backed off; "fast" is not due, the failed job still is
    await schedule.run_due()
    assert runs == ["fast", "flaky", "slow"]
