"""AWS's time in the strict stand-in: how long AWS takes, in one place, and what it shows meanwhile.

Off by default: snapshots, AMIs, copies and instances are ready at once, as moto has them.
``FEDIMG_STANDIN_TIME_SCALE`` (``options.time_scale()``) turns the model on and compresses it: real
seconds per AWS second (0.01: AWS's 10 minutes take 6 s).

A modelled wait is a ``Phase`` kept on the moto object it concerns (snapshot, AMI), started by the
request that begins it and applied lazily by the next request that reads the object (``settle``);
an instance's state and status checks are computed when read. No threads; a moto reset forgets it
all with the objects.

Durations below are AWS seconds. Each names its source; where AWS publishes no figure the value is
an estimate from reported measurements, and says so. ``bench/`` computes its critical path from
these same functions.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.models.instances import Instance, InstanceState

from fedimg.standins.aws import options
from fedimg.standins.aws.ebs_rules import EbsError

GIB = 1 << 30

# CompleteSnapshot "starts an asynchronous workflow that seals the snapshot" (EBS user guide,
# "Write snapshots"): Status pending, then completed. AWS gives no duration. Estimate: snapshot
# completion is reported in minutes (aws/aws-sdk-ruby#978: about 3 min for a volume snapshot;
# aws/aws-sdk-java#263), here a fixed part plus one proportional to the data written.
SEAL_BASE_S = 30.0
SEAL_S_PER_GIB = 30.0

# RegisterImage of an EBS snapshot answers at once with an AMI in state pending, available soon
# after. AWS gives no duration. Estimate: seconds to tens of seconds.
REGISTER_S = 15.0

# CopyImage: "The time taken to complete the copy operation ... is on a best-effort basis" (EC2 user
# guide, "Copy an AMI"); time-based copies, for those who need a bound, start at a 15-minute window
# and 500 MiB/s per snapshot (EBS user guide, "Time-based copies"). Reported: the 10-minute
# snapshot-completed waiter often times out on copies (aws-samples/copy-encrypted-ami#2); a peer
# needed 30 min (docs/AWS.md). Estimate: a fixed start plus the data written at ~5.7 MiB/s,
# times a per-region factor: 2 GiB written take 8 min at factor 1, 4 to 16 min over the spread.
COPY_BASE_S = 120.0
COPY_S_PER_GIB = 180.0
# The per-region factor, log-uniform in [low, high] from SHA-256 of the region name (median 1).
COPY_REGION_SPREAD = (0.5, 2.0)

# RunInstances → running: pending→running measured 16.4-16.6 s whatever the instance family
# (brevdev/ec2-coldboot-research, "Pending→Running", 2025).
RUNNING_S = 17.0
# Status checks "are performed every minute" (EC2 user guide, "Status checks for Amazon EC2
# instances"); initializing until the checks have run: modelled as two rounds after running.
STATUS_CHECKS_S = 120.0

# PutSnapshotBlock requests per snapshot: 1,000 per second, not adjustable (Service Quotas, EBS
# L-1774F84A). Above it: RequestThrottledException, HTTP 400, reason RESOURCE_LEVEL_THROTTLE (EBS
# direct API reference), which botocore's standard retry mode retries. Per real second, not
# compressed: requests take real time on loopback too.
PUT_BLOCK_RATE = 1000.0

_PHASE = "_fedimg_phase"
_WRITTEN = "_fedimg_written_bytes"
_CHECKS_OK_AT = "_fedimg_checks_ok_at"
_settle_lock = threading.Lock()


# --- the model: AWS seconds ------------------------------------------------------------------


def seal_seconds(written_bytes: int) -> float:
    """CompleteSnapshot until the snapshot is ``completed``."""
    return SEAL_BASE_S + SEAL_S_PER_GIB * written_bytes / GIB


def region_factor(region: str) -> float:
    """The copy-duration factor of ``region``: fixed per name, spread over COPY_REGION_SPREAD."""
    low, high = COPY_REGION_SPREAD
    u = int.from_bytes(hashlib.sha256(region.encode()).digest()[:8], "big") / 2**64
    return float(low * (high / low) ** u)


def copy_seconds(region: str, written_bytes: int) -> float:
    """CopyImage into ``region`` until the AMI is ``available``; its snapshots are copied
    concurrently, so ``written_bytes`` is that of the largest."""
    return (COPY_BASE_S + COPY_S_PER_GIB * written_bytes / GIB) * region_factor(region)


def enabled() -> bool:
    return options.time_scale() > 0


def real_seconds(aws_seconds: float) -> float:
    """``aws_seconds`` as the stand-in spends them (0 when the model is off)."""
    return aws_seconds * options.time_scale()


# --- phases on moto objects ----------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """``attribute`` shows ``during`` for ``seconds`` (real) from ``start``, then ``final``."""

    start: float
    seconds: float
    attribute: str
    during: str
    final: str

    def fraction(self, now: float) -> float:
        return 1.0 if self.seconds <= 0 else min(1.0, (now - self.start) / self.seconds)


def begin(obj: Any, aws_seconds: float, attribute: str, during: str, final: str) -> bool:
    """Starts a phase on ``obj`` if the model is on (its attribute shows ``during`` at once)."""
    if not enabled():
        return False
    setattr(obj, attribute, during)
    vars(obj)[_PHASE] = Phase(time.monotonic(), real_seconds(aws_seconds), attribute, during, final)
    return True


def settle(obj: Any) -> bool:
    """Ends ``obj``'s phase once its time has passed; True if that happened now. The final state
    is set only over ``during``: an object that failed or changed meanwhile keeps its state."""
    with _settle_lock:
        phase: Phase | None = vars(obj).get(_PHASE)
        if phase is None or phase.fraction(time.monotonic()) < 1.0:
            return False
        del vars(obj)[_PHASE]
        if getattr(obj, phase.attribute) == phase.during:
            setattr(obj, phase.attribute, phase.final)
        return True


def in_phase(obj: Any) -> bool:
    return _PHASE in vars(obj)


def written_bytes(snapshot: Any) -> int:
    """Data in ``snapshot``: what was written through EBS direct or copied, else its volume."""
    return int(vars(snapshot).get(_WRITTEN) or int(snapshot.volume_size) * GIB)


def start_seal(snapshot: Any, written: int) -> bool:
    """After CompleteSnapshot: ``pending`` (Progress rising) until sealed. False: model off."""
    vars(snapshot)[_WRITTEN] = written
    return begin(snapshot, seal_seconds(written), "status", "pending", "completed")


def start_register(ami: Any) -> None:
    """After RegisterImage: ``pending`` until ``available``."""
    begin(ami, REGISTER_S, "state", "pending", "available")


def start_copy(ami: Any, region: str, snapshots: list[tuple[Any, Any]]) -> None:
    """After CopyImage into ``region``: the AMI and each (source, copy) snapshot pending for the
    copy's duration."""
    written = max((written_bytes(source) for source, _ in snapshots), default=0)
    seconds = copy_seconds(region, written)
    for source, copy in snapshots:
        vars(copy)[_WRITTEN] = written_bytes(source)
        begin(copy, seconds, "status", "pending", "completed")
    begin(ami, seconds, "state", "pending", "available")


# --- instances: state and status checks computed when read -----------------------------------


class BootingState(InstanceState):
    """An instance's state that reads ``pending`` until ``running_at``, then ``running``;
    a state set meanwhile (terminate, stop) is kept."""

    _name: str
    _code: int

    def __init__(self, running_at: float) -> None:
        self.running_at = running_at
        super().__init__("pending", 0)

    def _settled(self) -> tuple[str, int]:
        if self._name == "pending" and time.monotonic() >= self.running_at:
            self._name, self._code = "running", 16
        return self._name, self._code

    @property
    def name(self) -> str:
        return self._settled()[0]

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def code(self) -> int:
        return self._settled()[1]

    @code.setter
    def code(self, value: int) -> None:
        self._code = value


def start_boot(instances: list[Any]) -> None:
    """After RunInstances: pending → running, then status checks initializing → ok."""
    if not enabled():
        return
    running_at = time.monotonic() + real_seconds(RUNNING_S)
    for instance in instances:
        instance._state = BootingState(running_at)
        vars(instance)[_CHECKS_OK_AT] = running_at + real_seconds(STATUS_CHECKS_S)


def _checks_initializing(instance: Any) -> bool:
    ok_at = vars(instance).get(_CHECKS_OK_AT)
    return ok_at is not None and instance.state_code == 16 and time.monotonic() < ok_at


# --- PutSnapshotBlock's request rate -------------------------------------------------------


@dataclass
class RequestRate:
    """A token bucket per snapshot: ``rate`` requests a second, bursts of one second's worth."""

    tokens: float | None = None
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, rate: float) -> bool:
        now = time.monotonic()
        with self.lock:
            if self.tokens is None:
                self.tokens = rate
            self.tokens = min(rate, self.tokens + (now - self.last) * rate)
            self.last = now
            if self.tokens < 1.0:
                return False
            self.tokens -= 1.0
            return True


def check_put_block_rate(snapshot_id: str, requests: RequestRate) -> None:
    """PutSnapshotBlock above the per-snapshot rate (model on): RequestThrottledException."""
    if enabled() and not requests.admit(options.put_block_rate(PUT_BLOCK_RATE)):
        raise EbsError(
            "RequestThrottledException",
            f"The request rate for snapshot '{snapshot_id}' is over its limit.",
            "RESOURCE_LEVEL_THROTTLE",
        )


# --- what moto's models show while a phase runs ------------------------------------------------


def patch_models() -> None:
    """DescribeSnapshots' Progress rises through a phase; DescribeInstanceStatus shows the checks
    ``initializing`` until they have run. Without a phase, moto's values."""
    moto_progress: Any = Snapshot.progress

    def progress(snapshot: Any) -> str:
        phase: Phase | None = vars(snapshot).get(_PHASE)
        if phase is not None and getattr(snapshot, phase.attribute) == phase.during:
            return f"{min(99, int(100 * phase.fraction(time.monotonic())))}%"
        return str(moto_progress.fget(snapshot))

    Snapshot.progress = property(progress)  # type: ignore[method-assign,assignment]
    for name in ("instance_status", "system_status"):
        setattr(Instance, name, _initializing_until_checked(getattr(Instance, name)))


def _initializing_until_checked(moto_status: Any) -> property:
    def status(instance: Any) -> dict[str, Any]:
        if _checks_initializing(instance):
            return {
                "Status": "initializing",
                "Details": [{"Name": "reachability", "Status": "initializing"}],
            }
        return dict(moto_status.fget(instance))

    return property(status)
