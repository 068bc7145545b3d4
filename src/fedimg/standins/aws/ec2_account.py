"""What EC2 tells about the account itself: its regions and its public-AMI quota.

- DescribeRegions (API_DescribeRegions.html): only the regions enabled for the account, unless
  ``AllRegions``; ``OptInStatus`` is ``opt-in-not-required``, ``opted-in`` or ``not-opted-in``.
  The stand-in account has enabled every opt-in region except ``options.disabled_regions()``,
  and lists only the regions of the request's partition.
- Service Quotas GetServiceQuota for EC2's "Public AMIs" (quota code L-0E3CBAB9, default 5 per
  region, "Amazon EC2 endpoints and quotas"), which moto lacks: the value is
  ``options.public_ami_quota()``, or AWS's default when that knob is off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult
from moto.utilities.utils import get_partition

from fedimg.standins.aws import options

PUBLIC_AMIS_QUOTA_CODE = "L-0E3CBAB9"
PUBLIC_AMIS_DEFAULT = 5
OPT_IN_NOT_REQUIRED = "opt-in-not-required"


def describe_regions(self: Any) -> ActionResult:
    """DescribeRegions with the account's opt-in state (RegionNames narrows the list)."""
    disabled = options.disabled_regions()
    partition = get_partition(self.region)
    names = set(self._get_param("RegionNames") or [])
    show_all = str(self._get_param("AllRegions", False)).lower() == "true"
    regions = []
    for region in self.ec2_backend.regions:
        if get_partition(region.name) != partition or (names and region.name not in names):
            continue
        if region.name in disabled:
            status = "not-opted-in"
        elif region.opt_in_status == OPT_IN_NOT_REQUIRED:
            status = OPT_IN_NOT_REQUIRED
        else:
            status = "opted-in"
        if status != "not-opted-in" or show_all:
            regions.append(
                {"RegionName": region.name, "Endpoint": region.endpoint, "OptInStatus": status}
            )
    return ActionResult({"Regions": regions})


def get_service_quota(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """GetServiceQuota (Service Quotas API_GetServiceQuota.html) knowing EC2's public AMIs."""

    def handler(self: Any) -> Any:
        params = json.loads(self.body)
        if (params.get("ServiceCode"), params.get("QuotaCode")) != ("ec2", PUBLIC_AMIS_QUOTA_CODE):
            return original(self)
        partition = get_partition(self.region)
        quota = {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:{partition}:servicequotas:{self.region}:{self.current_account}:"
            f"ec2/{PUBLIC_AMIS_QUOTA_CODE}",
            "QuotaCode": PUBLIC_AMIS_QUOTA_CODE,
            "QuotaName": "Public AMIs",
            "Value": float(options.public_ami_quota() or PUBLIC_AMIS_DEFAULT),
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }
        return json.dumps({"Quota": quota})

    return handler


def install() -> None:
    from moto.ec2.responses import EC2Response
    from moto.servicequotas.responses import ServiceQuotasResponse

    setattr(EC2Response, "describe_regions", describe_regions)  # noqa: B010 - typed method
    quota = get_service_quota(ServiceQuotasResponse.get_service_quota)
    setattr(ServiceQuotasResponse, "get_service_quota", quota)  # noqa: B010
