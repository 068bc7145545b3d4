"""Waiting for AWS state, always with a deadline.

Not a retry layer: requests are retried only by botocore (see clients.py). This polls *state*
(snapshot completed, image available) that AWS reaches eventually, and demands several good reads
in a row because describe calls are eventually consistent and can flip back. For the same reason
a resource just created may be unknown for a while: ``NotFound`` within ``unknown_grace_s`` of the
start is read as "not there yet", not as an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from botocore.exceptions import ClientError

from fedimg.aws.clients import error_code
from fedimg.errors import AwsError, TransientError

# Poll quickly at first (small snapshots and AMIs are ready at once), then at a tenth of the time
# already waited, so a state reached after T seconds is seen by about 1.1 T whatever T is (doubling
# intervals overshot a 30 s wait by 85%), never slower than every 15 s for long copies.
FIRST_INTERVAL = 0.05
POLL_FRACTION = 0.1
MAX_INTERVAL = 15.0
# A good read is confirmed soon after: the flip-back it guards against is short-lived.
CONFIRM_INTERVAL = 1.0
GOOD_READS = 2
UNKNOWN_GRACE_S = 60.0


def next_interval(elapsed_s: float, *, confirming: bool) -> float:
    """Seconds until the next poll, ``elapsed_s`` into the wait."""
    interval = min(MAX_INTERVAL, max(FIRST_INTERVAL, elapsed_s * POLL_FRACTION))
    return min(interval, CONFIRM_INTERVAL) if confirming else interval


def wait_until(
    what: str,
    probe: Callable[[], str],
    *,
    done: str,
    failed: tuple[str, ...] = ("failed", "error"),
    deadline_s: float,
    good_reads: int = GOOD_READS,
    unknown_grace_s: float = UNKNOWN_GRACE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Polls ``probe`` (returning a state) until it returns ``done`` ``good_reads`` times in a row.

    A state in ``failed`` raises a non-retryable AwsError; passing the deadline a TransientError.
    """
    start = clock()
    end = start + deadline_s
    streak = 0
    state = ""
    while clock() < end:
        try:
            state = probe()
        except ClientError as e:
            new = clock() < start + unknown_grace_s
            if not (new and error_code(e).endswith(".NotFound")):
                raise
            state = ""
        if state in failed:
            raise AwsError(f"{what}: state {state}", retryable=False)
        streak = streak + 1 if state == done else 0
        if streak >= good_reads:
            return
        now = clock()
        sleep(min(next_interval(now - start, confirming=streak > 0), max(0.0, end - now)))
    raise TransientError(f"{what}: still {state or 'unknown'} after {deadline_s:.0f} s")
