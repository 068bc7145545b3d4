"""The stand-in's knobs, read from the environment at each request.

Reading them per request lets a test in the server's process change them (``monkeypatch.setenv``)
and a server in another process inherit them from its environment.
"""

from __future__ import annotations

import os

VISIBILITY_DELAY = "FEDIMG_STANDIN_VISIBILITY_DELAY"
MINUTE_SECONDS = "FEDIMG_STANDIN_MINUTE_SECONDS"
SSM_VALIDATION_DELAY = "FEDIMG_STANDIN_SSM_VALIDATION_DELAY"
PUBLIC_AMI_QUOTA = "FEDIMG_STANDIN_PUBLIC_AMI_QUOTA"
DENY = "FEDIMG_STANDIN_DENY"
DISABLED_REGIONS = "FEDIMG_STANDIN_DISABLED_REGIONS"
TIME_SCALE = "FEDIMG_STANDIN_TIME_SCALE"
PUT_BLOCK_RATE = "FEDIMG_STANDIN_PUT_BLOCK_RATE"
IMPORT_SECONDS = "FEDIMG_STANDIN_IMPORT_SECONDS"
IMPORT_STALL_AT = "FEDIMG_STANDIN_IMPORT_STALL_AT"


def _float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def visibility_delay() -> float:
    """Seconds for which a new snapshot, AMI or copy is invisible to Describe* (0: off)."""
    return max(0.0, _float(VISIBILITY_DELAY, 0.0))


def minute_seconds() -> float:
    """Real seconds in one of AWS's minutes (e.g. StartSnapshot's Timeout); 60 unless compressed."""
    return max(0.001, _float(MINUTE_SECONDS, 60.0))


def time_scale() -> float:
    """Real seconds per AWS second in the time model (``timing.py``); 0, the default, turns the
    model off: snapshots, AMIs, copies and instances are ready at once."""
    return max(0.0, _float(TIME_SCALE, 0.0))


def put_block_rate(default: float) -> float:
    """PutSnapshotBlock requests per second and snapshot before throttling (time model only)."""
    return max(0.001, _float(PUT_BLOCK_RATE, default))


def import_seconds() -> float:
    """Real seconds an ImportSnapshot task takes from ``pending`` to ``completed`` (AWS takes
    15-100 minutes; tests compress it)."""
    return max(0.0, _float(IMPORT_SECONDS, 1.0))


def import_stall_at() -> float | None:
    """A progress percentage at which every import task stops moving (a hung task, as AWS's
    sometimes are); None, the default: tasks never stall."""
    value = _float(IMPORT_STALL_AT, -1.0)
    return value if value >= 0 else None


# AWS's default "Public AMIs" quota per region (Service Quotas ec2/L-0E3CBAB9).
PUBLIC_AMI_QUOTA_DEFAULT = 5


def public_ami_quota() -> int:
    """Public AMIs allowed per region: what GetServiceQuota reports and ModifyImageAttribute
    enforces (AWS's default unless set)."""
    return max(1, int(_float(PUBLIC_AMI_QUOTA, PUBLIC_AMI_QUOTA_DEFAULT)))


def ssm_validation_delay() -> float:
    """Seconds SSM takes to validate an aws:ec2:image value (reads see the old one meanwhile)."""
    return max(0.0, _float(SSM_VALIDATION_DELAY, 0.0))


def _names(name: str) -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get(name, "").split(",") if n.strip())


def denied_actions() -> frozenset[str]:
    """IAM actions the caller may not do, lower case (``ec2:RegisterImage,ebs:StartSnapshot``);
    IAM action names are case-insensitive."""
    return frozenset(a.lower() for a in _names(DENY))


def disabled_regions() -> frozenset[str]:
    """Opt-in regions this account has not enabled (``ap-east-1,me-south-1``)."""
    return _names(DISABLED_REGIONS)
