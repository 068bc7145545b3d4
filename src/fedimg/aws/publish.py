"""An AMI becomes available to the world: launch permission, snapshot permission, the SSM
"latest" parameter, and a deprecation time."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.composeid import is_newer
from fedimg.config import Settings
from fedimg.errors import AwsError
from fedimg.identity import TAG_COMPOSE, ImageIdentity, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    region: str
    ami: str
    snapshots: tuple[str, ...]
    ssm_parameter: str  # "" when none was written
    deprecate_at: str  # ISO time, "" when not set


def _launch_permission(settings: Settings) -> list[dict[str, str]]:
    p = settings.publish
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
    what = f"publishing {ami} in {region}"
    try:
        perms = _launch_permission(settings)
        if perms:
            ec2.modify_image_attribute(
                ImageId=ami,
                Attribute="launchPermission",
                LaunchPermission={"Add": perms},  # type: ignore[typeddict-item]
            )
        snapshots = _snapshots_of(ec2, ami)
        for snap in snapshots:
            _share_snapshot(ec2, settings, snap)
        deprecate_at = _deprecate(ec2, settings, ami, now or dt.datetime.now(dt.UTC))
        parameter = _update_latest(clients.ssm(region), ec2, settings, identity, ami)
    except (ClientError, BotoCoreError) as e:
        if error_code(e) == "ResourceLimitExceeded":
            raise AwsError(
                f"{what}: the account's public AMI quota in {region} is used up "
                "(ResourceLimitExceeded); raise it or deregister old public AMIs",
                retryable=False,
            ) from e
        raise translate(e, what) from e
    return Published(region, ami, tuple(snapshots), parameter, deprecate_at)


def _snapshots_of(ec2: EC2Client, ami: str) -> list[str]:
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        return []
    return [
        m["Ebs"]["SnapshotId"]
        for m in images[0].get("BlockDeviceMappings", [])
        if "Ebs" in m and "SnapshotId" in m["Ebs"]
    ]


def _share_snapshot(ec2: EC2Client, settings: Settings, snapshot: str) -> None:
    p = settings.publish
    kwargs: dict[str, Any] = {}
    if p.public:
        kwargs["GroupNames"] = ["all"]
    elif p.user_ids:
        kwargs["UserIds"] = list(p.user_ids)
    else:
        return  # organizations get volume permission through the AMI's launch permission
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="add",
        **kwargs,
    )


def _deprecate(ec2: EC2Client, settings: Settings, ami: str, now: dt.datetime) -> str:
    days = settings.publish.deprecate_after_days
    if not days:
        return ""
    when = (now + dt.timedelta(days=days)).replace(second=0, microsecond=0)
    try:
        ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=when)
    except (ClientError, BotoCoreError, ResponseParserError) as e:
        # The local stand-in (moto) answers an HTML 500 page; real AWS implements it. A missing
        # deprecation time is not worth failing a release for.
        reason = str(e).splitlines()[0][:120]
        log.warning("%s: deprecation time not set: %s: %s", ami, type(e).__name__, reason)
        return ""
    return when.isoformat()


def ssm_name(settings: Settings, identity: ImageIdentity) -> str:
    return settings.publish.ssm_parameter.format(
        release=identity.release or "unknown",
        subvariant=identity.subvariant or "unknown",
        arch=identity.arch,
        image_name=identity.image_name,
    )


def _update_latest(
    ssm: SSMClient, ec2: EC2Client, settings: Settings, identity: ImageIdentity, ami: str
) -> str:
    """Points the "latest" parameter at ``ami`` unless it already names an AMI of a newer compose
    (re-running an old compose must not turn "latest" back)."""
    if not settings.publish.ssm_parameter:
        return ""
    name = ssm_name(settings, identity)
    try:
        current = ssm.get_parameter(Name=name)["Parameter"].get("Value", "")
    except ClientError as e:
        if error_code(e) != "ParameterNotFound":
            raise
        current = ""
    if current == ami:
        return name
    if current and identity.compose_id and is_newer(_compose_of(ec2, current), identity.compose_id):
        log.info("%s: %s already names a newer compose's AMI %s", ami, name, current)
        return name
    ssm.put_parameter(Name=name, Value=ami, Type="String", DataType="aws:ec2:image", Overwrite=True)
    return name


def _compose_of(ec2: EC2Client, ami: str) -> str:
    try:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError:
        return ""
    return tags_of(images[0]).get(TAG_COMPOSE, "") if images else ""
