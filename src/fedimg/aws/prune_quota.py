"""Quota awareness: before an AMI is made public in a region, there must be room under the
account's "Public AMIs" quota there (Service Quotas ec2/L-0E3CBAB9).

When there is none, the region is pruned per the retention policy (``retention.prune_for_quota``)
and counted again; if that does not free a place, publishing in that region fails with an error
naming the quota, the count and what to do, instead of AWS's bare ``ResourceLimitExceeded``.
Two images published at once in one region can still race for the last place; the loser gets
AWS's refusal, which publish.py translates the same way.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, translate
from fedimg.aws.prune import Plan, apply, plan
from fedimg.config import Settings
from fedimg.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

PUBLIC_AMIS_QUOTA_CODE = "L-0E3CBAB9"


def public_ami_quota(clients: Clients, region: str) -> int | None:
    """The region's "Public AMIs" quota, or None when Service Quotas cannot tell (logged)."""
    quotas = clients._client("service-quotas", region)
    try:
        answer = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=PUBLIC_AMIS_QUOTA_CODE)
    except (ClientError, BotoCoreError) as e:
        log.warning("%s; publishing without checking the quota first", translate(e, region))
        return None
    return int(answer["Quota"]["Value"])


def count_public(ec2: EC2Client) -> int:
    pages = ec2.get_paginator("describe_images").paginate(
        Owners=["self"], Filters=[{"Name": "is-public", "Values": ["true"]}]
    )
    return sum(len(page["Images"]) for page in pages)


def ensure_public_capacity(
    settings: Settings, clients: Clients, region: str, *, now: datetime | None = None
) -> None:
    """Returns when one more public AMI fits in ``region``; prunes the region first if it must
    and may. Raises AwsError (not retryable) when it does not fit."""
    quota = public_ami_quota(clients, region)
    if quota is None:
        return
    ec2 = clients.ec2(region)
    what = f"counting public AMIs in {region}"
    try:
        public = count_public(ec2)
        if public < quota:
            return
        pruned = "retention.prune_for_quota is off"
        if settings.retention.prune_for_quota:
            removals = plan(settings, clients, regions=[region], now=now).removals_in(region)
            done, _ = apply(clients, Plan(removals, []))
            pruned = f"pruning removed {sum(d.ok for d in done.values())} AMIs"
            public = count_public(ec2)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    if public < quota:
        log.info("%s: %s; the public AMI quota has room again", region, pruned)
        return
    raise AwsError(
        f'{region}: the account has {public} public AMIs and its quota "Public AMIs" '
        f"(Service Quotas ec2/{PUBLIC_AMIS_QUOTA_CODE}) is {quota}, so no AMI can be made public "
        f"({pruned}): raise it with `aws service-quotas request-service-quota-increase "
        f"--service-code ec2 --quota-code {PUBLIC_AMIS_QUOTA_CODE} --desired-value "
        f"{quota + 10} --region {region}`, or shorten [retention] and run `fedimg prune --yes`",
        retryable=False,
    )
