"""Waiting for AWS state, always with a deadline.

Not a retry layer: requests are retried only by botocore (see clients.py). This polls *state*
(snapshot completed, image available) that AWS reaches eventually, and demands several good reads
in a row because describe calls are eventually consistent and can flip back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fedimg.errors import AwsError, TransientError

# Poll quickly at first (small snapshots and AMIs are ready at once), back off to 15 s for long
# copies.
FIRST_INTERVAL = 0.05
MAX_INTERVAL = 15.0
GOOD_READS = 2


def wait_until(
    what: str,
    probe: Callable[[], str],
    *,
    done: str,
    failed: tuple[str, ...] = ("failed", "error"),
    deadline_s: float,
    good_reads: int = GOOD_READS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Polls ``probe`` (returning a state) until it returns ``done`` ``good_reads`` times in a row.

    A state in ``failed`` raises a non-retryable AwsError; passing the deadline a TransientError.
    """
    end = time.monotonic() + deadline_s
    interval = FIRST_INTERVAL
    streak = 0
    state = ""
    while time.monotonic() < end:
        state = probe()
        if state in failed:
            raise AwsError(f"{what}: state {state}", retryable=False)
        streak = streak + 1 if state == done else 0
        if streak >= good_reads:
            return
        sleep(min(interval, max(0.0, end - time.monotonic())))
        interval = min(interval * 2, MAX_INTERVAL)
    raise TransientError(f"{what}: still {state or 'unknown'} after {deadline_s:.0f} s")
