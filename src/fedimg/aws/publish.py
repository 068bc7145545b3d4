"""An AMI becomes available to the world: launch permission, optionally snapshot permission, the
SSM "latest" parameter, and a deprecation time — each read back from AWS before it counts.

Before making anything public in a region, the account's block-public-access settings there are
read: a setting that would refuse the configured publishing fails that region with an error that
names the setting and the command that changes it, and nothing is made public. Then the region's
public-AMI quota must have room (prune_quota.py). A GA release's AMI is protected from
deregistration.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws import limits
from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.prune_quota import ensure_public_capacity
from fedimg.aws.wait import wait_until
from fedimg.composeid import is_newer
from fedimg.composekind import Kind
from fedimg.config import PublishSettings, Settings
from fedimg.errors import AwsError, InputError, TransientError
from fedimg.identity import TAG_COMPOSE, ImageIdentity, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient

log = logging.getLogger(__name__)

UNBLOCKED = "unblocked"
UNPROTECTED = "disabled"  # DescribeImages' DeregistrationProtection when off
# Answers of a region or partition that lacks an action.
NOT_OFFERED = frozenset({"InvalidAction", "UnsupportedOperation"})
# PutParameter with DataType aws:ec2:image returns before AWS has validated the AMI id; until then
# GetParameter returns the previous value. Validation takes seconds; this bounds the wait.
SSM_CONFIRM_SECONDS = 120.0
# EnableImageDeprecation refuses a time in the past; an AMI older than deprecate_after_days (a
# late re-run) is deprecated this soon instead.
DEPRECATION_MARGIN = dt.timedelta(minutes=2)


@dataclass(frozen=True)
class Published:
    region: str
    ami: str
    snapshots: tuple[str, ...]  # the AMI's snapshots (public only with publish.public_snapshots)
    ssm_parameter: str  # "" when none was written
    deprecate_at: str  # "YYYY-MM-DDTHH:MM:SSZ" as AWS holds it, "" when not set


def _launch_permission(p: PublishSettings) -> list[dict[str, str]]:
    if p.public:
        return [{"Group": "all"}]
    return (
        [{"UserId": u} for u in p.user_ids]
        + [{"OrganizationArn": a} for a in p.organization_arns]
        + [{"OrganizationalUnitArn": a} for a in p.organizational_unit_arns]
    )


def publish_image(
    settings: Settings,
    clients: Clients,
    identity: ImageIdentity,
    region: str,
    ami: str,
    *,
    now: dt.datetime | None = None,
) -> Published:
    """Makes ``ami`` public (or shared as configured). Safe to re-run: every step sets a state."""
    ec2 = clients.ec2(region)
    p = settings.publish
    what = f"publishing {ami} in {region}"
    try:
        image = _describe(ec2, ami)
        make_public = p.public and not image.get("Public", False)
        snapshots = _snapshots_of(image)
        check_block_public_access(
            ec2, region, images=make_public, snapshots=p.public_snapshots and bool(snapshots)
        )
        if make_public:
            ensure_public_capacity(settings, clients, region, now=now)
        perms = _launch_permission(p)
        if perms and (make_public or not p.public):
            # LaunchPermission alone names the attribute: one attribute per call.
            ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": perms})  # type: ignore[typeddict-item]
        for snap in snapshots:
            _share_snapshot(ec2, p, snap)
        deprecate_at = _deprecate(ec2, settings, image, now or dt.datetime.now(dt.UTC))
        _protect_ga(ec2, settings, identity, image)
        parameter = _update_latest(clients.ssm(region), ec2, settings, identity, ami, region)
    except (ClientError, BotoCoreError) as e:
        if error_code(e) == "ResourceLimitExceeded":
            raise AwsError(
                f"{what}: the account's public AMI quota in {region} is used up "
                "(ResourceLimitExceeded, Service Quotas ec2/L-0E3CBAB9); raise it or run "
                "`fedimg prune --yes`",
                retryable=False,
            ) from e
        raise translate(e, what) from e
    return Published(region, ami, tuple(snapshots), parameter, deprecate_at)


def _protect_ga(
    ec2: EC2Client, settings: Settings, identity: ImageIdentity, image: dict[str, Any]
) -> None:
    """A GA release's AMI is kept for ever: protected from deregistration where AWS offers it
    (EnableImageDeregistrationProtection; without the 24-hour cooldown, so that a person who
    means it can still remove one)."""
    if identity.compose_kind != Kind.GA or not settings.retention.protect_ga:
        return
    if image.get("DeregistrationProtection", UNPROTECTED) != UNPROTECTED:
        return
    try:
        ec2.enable_image_deregistration_protection(ImageId=image["ImageId"])
    except ClientError as e:
        if error_code(e) not in NOT_OFFERED:
            raise
        log.warning("%s: no deregistration protection here (%s)", image["ImageId"], error_code(e))


def check_block_public_access(
    ec2: EC2Client, region: str, *, images: bool, snapshots: bool
) -> None:
    """Fails when the account's block public access would refuse what is about to be public."""
    if images:
        r = ec2.get_image_block_public_access_state()
        state = r.get("ImageBlockPublicAccessState", UNBLOCKED)
        if state != UNBLOCKED:
            raise _blocked(
                "AMIs",
                state,
                r.get("ManagedBy", ""),
                f"aws ec2 disable-image-block-public-access --region {region}",
                "publish.public = false to share with accounts instead",
            )
    if snapshots:
        r2 = ec2.get_snapshot_block_public_access_state()
        state = r2.get("State", UNBLOCKED)
        if state != UNBLOCKED:
            raise _blocked(
                "snapshots",
                state,
                r2.get("ManagedBy", ""),
                f"aws ec2 disable-snapshot-block-public-access --region {region}",
                "publish.public_snapshots = false (public AMIs do not need public snapshots)",
            )


def _blocked(kind: str, state: str, managed_by: str, command: str, instead: str) -> AwsError:
    if managed_by == "declarative-policy":
        how = "it is set by an AWS Organizations declarative policy, which must change"
    else:
        how = f"allow it with `{command}`"
    return AwsError(
        f"block public access for {kind} is {state} in this account and region, so fedimg "
        f"cannot make them public: {how}, or set {instead}",
        retryable=False,
    )


def _describe(ec2: EC2Client, ami: str) -> dict[str, Any]:
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise AwsError(f"{ami}: not found", retryable=True)
    return dict(images[0])


def _snapshots_of(image: dict[str, Any]) -> list[str]:
    return [
        m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings", [])
        if "Ebs" in m and "SnapshotId" in m["Ebs"]
    ]


def _share_snapshot(ec2: EC2Client, p: PublishSettings, snapshot: str) -> None:
    kwargs: dict[str, Any] = {}
    if p.public and p.public_snapshots:
        snaps = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
        if snaps and snaps[0].get("Encrypted"):
            raise AwsError(
                f"snapshot {snapshot} is encrypted and AWS cannot make encrypted snapshots "
                "public: set publish.public_snapshots = false",
                retryable=False,
            )
        kwargs["GroupNames"] = ["all"]
    elif not p.public and p.user_ids:
        kwargs["UserIds"] = list(p.user_ids)
    else:
        return  # launching an AMI needs no access to its snapshot
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="add",
        **kwargs,
    )


def _deprecate(ec2: EC2Client, settings: Settings, image: dict[str, Any], now: dt.datetime) -> str:
    """Sets the deprecation time ``deprecate_after_days`` after the AMI's CreationDate (AWS's
    own clock: the two-year limit for public AMIs counts from it) and reads it back."""
    days = settings.publish.deprecate_after_days
    if not days:
        return ""
    ami = image["ImageId"]
    created = _aws_time(image["CreationDate"])
    when = limits.deprecation_time(created, days, public=settings.publish.public)
    earliest = (now + DEPRECATION_MARGIN).replace(second=0, microsecond=0)
    if when < earliest:
        log.warning(
            "%s: created %s, older than %d days: deprecated at %s", ami, created, days, earliest
        )
        when = earliest
    if image.get("DeprecationTime") and _aws_time(image["DeprecationTime"]) == when:
        return _iso(when)
    ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=when)
    held = _describe(ec2, ami).get("DeprecationTime", "")
    if not held or _aws_time(held) != when:
        raise AwsError(
            f"{ami}: EnableImageDeprecation to {_iso(when)} succeeded but the AMI's "
            f"DeprecationTime reads {held or 'nothing'}",
            retryable=True,
        )
    return _iso(when)


def _aws_time(text: str) -> dt.datetime:
    """AWS's ISO 8601 times ("2025-01-01T12:00:00.000Z") as aware datetimes."""
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ssm_name(settings: Settings, identity: ImageIdentity, region: str) -> str:
    name = settings.publish.ssm_parameter.format(
        release=identity.release or "unknown",
        subvariant=identity.subvariant or "unknown",
        arch=identity.arch,
        image_name=identity.image_name,
    )
    problem = limits.ssm_name_problem(name, region)
    if problem:
        raise InputError(problem)
    return name


def _update_latest(
    ssm: SSMClient,
    ec2: EC2Client,
    settings: Settings,
    identity: ImageIdentity,
    ami: str,
    region: str,
) -> str:
    """Points the "latest" parameter at ``ami`` unless it already names an AMI of a newer compose
    (re-running an old compose must not turn "latest" back), and waits until AWS holds it."""
    if not settings.publish.ssm_parameter:
        return ""
    name = ssm_name(settings, identity, region)
    current = _parameter_value(ssm, name)
    if current == ami:
        return name
    if current and identity.compose_id and is_newer(_compose_of(ec2, current), identity.compose_id):
        log.info("%s: %s already names a newer compose's AMI %s", ami, name, current)
        return name
    ssm.put_parameter(Name=name, Value=ami, Type="String", DataType="aws:ec2:image", Overwrite=True)

    def settled() -> str:
        """``ami`` once AWS holds it, or once a newer compose's run has written its own AMI since
        (two composes of one release published at once: the newer one stays)."""
        value = _parameter_value(ssm, name)
        if value and value != ami and is_newer(_compose_of(ec2, value), identity.compose_id):
            log.info("%s: %s now names a newer compose's AMI %s", ami, name, value)
            return ami
        return value

    try:
        wait_until(
            f"SSM parameter {name}",
            settled,
            done=ami,
            failed=(),
            deadline_s=SSM_CONFIRM_SECONDS,
        )
    except TransientError as e:
        raise AwsError(
            f"SSM parameter {name} does not name {ami} {SSM_CONFIRM_SECONDS:.0f} s after "
            f"PutParameter: AWS's aws:ec2:image validation did not accept it ({e})",
            retryable=True,
        ) from e
    return name


def _parameter_value(ssm: SSMClient, name: str) -> str:
    try:
        return ssm.get_parameter(Name=name)["Parameter"].get("Value", "")
    except ClientError as e:
        if error_code(e) != "ParameterNotFound":
            raise
        return ""


def _compose_of(ec2: EC2Client, ami: str) -> str:
    try:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError:
        return ""
    return tags_of(images[0]).get(TAG_COMPOSE, "") if images else ""
