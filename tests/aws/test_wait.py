"""Waiting for AWS state: deadlines, good reads in a row, and how late a state is seen."""

from __future__ import annotations

import pytest

from fedimg.aws.wait import MAX_INTERVAL, wait_until
from fedimg.errors import AwsError, TransientError


class FakeClock:
    """Time that passes only when the waiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def ready_after(clock: FakeClock, seconds: float) -> object:
    return lambda: "available" if clock.now >= seconds else "pending"


@pytest.mark.parametrize("ready_s", [0.0, 15.0, 30.0, 137.0, 480.0, 1800.0])
def test_a_state_is_seen_soon_after_aws_reaches_it(ready_s: float) -> None:
    """Within 10% (plus the confirming read) of when AWS got there, not at the next doubling."""
    clock = FakeClock()
    wait_until(
        "ami",
        ready_after(clock, ready_s),  # type: ignore[arg-type]
        done="available",
        deadline_s=3600,
        sleep=clock.sleep,
        clock=clock,
    )
    assert ready_s <= clock.now <= ready_s * 1.1 + 1.2
    assert max(clock.sleeps, default=0) <= MAX_INTERVAL


def test_two_good_reads_in_a_row_are_needed() -> None:
    clock = FakeClock()
    states = iter(["available", "pending", "available", "available"])
    wait_until(
        "ami", lambda: next(states), done="available", deadline_s=60, sleep=clock.sleep, clock=clock
    )
    assert len(clock.sleeps) == 3


def test_a_failed_state_is_permanent_and_the_deadline_transient() -> None:
    clock = FakeClock()
    with pytest.raises(AwsError) as failed:
        wait_until(
            "ami", lambda: "failed", done="available", deadline_s=60, sleep=clock.sleep, clock=clock
        )
    assert not failed.value.retryable
    with pytest.raises(TransientError, match="still pending after 60 s"):
        wait_until(
            "ami",
            lambda: "pending",
            done="available",
            deadline_s=60,
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.now <= 60 + 60 + 1e-6
