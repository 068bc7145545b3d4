"""EnableImageDeprecation and DisableImageDeprecation (missing in moto: it answers 500)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from moto.core.responses import ActionResult

from fedimg.standins.aws import ec2_rules as rules


def enable_image_deprecation(self: Any) -> ActionResult:
    """API_EnableImageDeprecation.html: DeprecateAt checked and rounded by
    ``rules.deprecation_time``; DescribeImages then returns it as ``DeprecationTime``."""
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    requested = _naive_utc(self._get_param("DeprecateAt"))
    when = rules.deprecation_time(requested, _naive_utc(None), ami.creation_date, ami.is_public)
    self.error_on_dryrun()
    ami.deprecation_time = rules.format_time(when)
    return ActionResult({"Return": True})


def disable_image_deprecation(self: Any) -> ActionResult:
    """API_DisableImageDeprecation.html: "Cancels the deprecation of the specified AMI"."""
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    self.error_on_dryrun()
    ami.deprecation_time = None
    return ActionResult({"Return": True})


def _naive_utc(value: Any) -> dt.datetime:
    """``value`` (a parsed timestamp or its text; None: now) as naive UTC, like moto's dates."""
    if value is None:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value  # type: ignore[no-any-return]
