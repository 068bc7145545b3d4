"""Publishing against the AWS stand-in, asserted by reading back what AWS holds: launch and
create-volume permissions, DeprecationTime, the SSM parameter; and block public access refusing
clearly with nothing made public."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from fedimg.aws import publish
from fedimg.aws.clients import Clients
from fedimg.aws.image import register_image_if_not_exists
from fedimg.aws.publish import publish_image
from fedimg.config import Settings
from fedimg.errors import AwsError
from fedimg.identity import ImageIdentity
from fedimg.standins.aws.options import SSM_VALIDATION_DELAY
from tests.helpers import ec2, record

REGION = "us-east-1"
IDENTITY = ImageIdentity(
    "Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64", "x86_64", "ab" * 32, release="41"
)
LATEST = "/fedimg/41/unknown/x86_64/latest"
ACCOUNT = "123456789012"
# One session for the module: each new session parses the service models again (~0.4 s).
SESSION = boto3.session.Session()


def clients_of(settings: Settings) -> Clients:
    return Clients(settings.aws, session=SESSION)


def with_publish(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, publish=dataclasses.replace(settings.publish, **changes))


def registered(settings: Settings, aws: str, identity: ImageIdentity = IDENTITY) -> str:
    client = ec2(aws)
    vol = client.create_volume(Size=5, AvailabilityZone=f"{REGION}a")["VolumeId"]
    snap = client.create_snapshot(VolumeId=vol)["SnapshotId"]
    return register_image_if_not_exists(settings, clients_of(settings), identity, snap, 5).ami


def held(aws: str, ami: str) -> dict[str, Any]:
    return dict(ec2(aws).describe_images(ImageIds=[ami])["Images"][0])


def launch_permissions(aws: str, ami: str) -> list[dict[str, str]]:
    r = ec2(aws).describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    return list(r["LaunchPermissions"])


def volume_permissions(aws: str, ami: str) -> list[dict[str, str]]:
    (mapping,) = held(aws, ami)["BlockDeviceMappings"]
    r = ec2(aws).describe_snapshot_attribute(
        SnapshotId=mapping["Ebs"]["SnapshotId"], Attribute="createVolumePermission"
    )
    return list(r["CreateVolumePermissions"])


def latest(aws: str) -> str:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=aws)
    try:
        return str(ssm.get_parameter(Name=LATEST)["Parameter"]["Value"])
    except ClientError:
        return ""


def aws_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def test_public_ami_is_public_deprecated_and_latest_its_snapshot_private(
    settings: Settings, aws: str
) -> None:
    ami = registered(settings, aws)
    done = publish_image(settings, clients_of(settings), IDENTITY, REGION, ami)
    image = held(aws, ami)
    assert image["Public"] is True and launch_permissions(aws, ami) == [{"Group": "all"}]
    assert volume_permissions(aws, ami) == []  # launching needs no snapshot access
    created = aws_time(image["CreationDate"])
    expected = (created + dt.timedelta(days=730)).replace(second=0, microsecond=0)
    assert aws_time(image["DeprecationTime"]) == expected
    assert done.deprecate_at == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert latest(aws) == ami and done.ssm_parameter == LATEST


def test_public_snapshots_setting_makes_the_snapshot_public(settings: Settings, aws: str) -> None:
    s = with_publish(settings, public_snapshots=True)
    ami = registered(s, aws)
    publish_image(s, clients_of(s), IDENTITY, REGION, ami)
    assert volume_permissions(aws, ami) == [{"Group": "all"}]


def test_encrypted_snapshot_is_not_made_public(settings: Settings, aws: str) -> None:
    s = with_publish(settings, public_snapshots=True)
    client = ec2(aws)
    vol = client.create_volume(Size=5, AvailabilityZone=f"{REGION}a", Encrypted=True)
    snap = client.create_snapshot(VolumeId=vol["VolumeId"])["SnapshotId"]
    ami = register_image_if_not_exists(s, clients_of(s), IDENTITY, snap, 5).ami
    with pytest.raises(AwsError, match=r"encrypted .* publish\.public_snapshots = false"):
        publish_image(s, clients_of(s), IDENTITY, REGION, ami)
    assert volume_permissions(aws, ami) == []


def test_shared_ami_goes_to_the_accounts_only(settings: Settings, aws: str) -> None:
    s = with_publish(settings, public=False, user_ids=(ACCOUNT,), deprecate_after_days=1000)
    ami = registered(s, aws)
    publish_image(s, clients_of(s), IDENTITY, REGION, ami)
    image = held(aws, ami)
    assert image["Public"] is False
    assert launch_permissions(aws, ami) == [{"UserId": ACCOUNT}]
    assert volume_permissions(aws, ami) == [{"UserId": ACCOUNT}]
    created = aws_time(image["CreationDate"])
    assert aws_time(image["DeprecationTime"]) - created > dt.timedelta(days=999)


def test_deprecation_counts_from_the_creation_date_not_the_clock(
    settings: Settings, aws: str
) -> None:
    """A clock days ahead of AWS's must not push a public AMI past two years after creation."""
    ami = registered(settings, aws)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=5)
    publish_image(settings, clients_of(settings), IDENTITY, REGION, ami, now=ahead)
    image = held(aws, ami)
    allowed = aws_time(image["CreationDate"]) + dt.timedelta(days=730)
    assert allowed - dt.timedelta(minutes=1) < aws_time(image["DeprecationTime"]) <= allowed


def test_publishing_again_changes_nothing(settings: Settings, aws: str) -> None:
    ami = registered(settings, aws)
    publish_image(settings, clients_of(settings), IDENTITY, REGION, ami)
    session = boto3.session.Session()
    rec = record(session)
    publish_image(settings, Clients(settings.aws, session=session), IDENTITY, REGION, ami)
    for op in ("ModifyImageAttribute", "EnableImageDeprecation", "PutParameter"):
        assert rec.count(op) == 0, op


def test_failed_deprecation_fails_publishing(settings: Settings, aws: str) -> None:
    ami = registered(settings, aws)
    session = boto3.session.Session()

    def refuse(params: dict[str, Any], **_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "InvalidParameterValue", "Message": "no"}}, "EnableImageDeprecation"
        )

    session.events.register("provide-client-params.ec2.EnableImageDeprecation", refuse)
    with pytest.raises(AwsError, match=f"publishing {ami} in {REGION}: InvalidParameterValue"):
        publish_image(settings, Clients(settings.aws, session=session), IDENTITY, REGION, ami)


def test_latest_is_confirmed_after_ssms_asynchronous_validation(
    settings: Settings, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PutParameter with aws:ec2:image returns before AWS validated the AMI; publishing returns
    only once GetParameter names the new AMI."""
    older = registered(settings, aws)
    publish_image(settings, clients_of(settings), IDENTITY, REGION, older)
    newer_identity = dataclasses.replace(IDENTITY, sha256="cd" * 32)
    newer = registered(
        dataclasses.replace(
            settings, image=dataclasses.replace(settings.image, name_template="{image_name}-2")
        ),
        aws,
        newer_identity,
    )
    monkeypatch.setenv(SSM_VALIDATION_DELAY, "0.5")
    publish_image(settings, clients_of(settings), newer_identity, REGION, newer)
    assert latest(aws) == newer


def test_latest_naming_a_missing_ami_is_an_error(
    settings: Settings, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS's validation drops a value naming no AMI of the region: an error, in bounded time."""
    monkeypatch.setattr(publish, "SSM_CONFIRM_SECONDS", 1.0)
    clients = clients_of(settings)
    missing = "ami-0123456789abcdef0"
    with pytest.raises(AwsError, match="does not name ami-0123456789abcdef0"):
        publish._update_latest(
            clients.ssm(REGION), clients.ec2(REGION), settings, IDENTITY, missing, REGION
        )
    assert latest(aws) == ""


def test_image_block_public_access_refuses_clearly_and_nothing_is_public(
    settings: Settings, aws: str
) -> None:
    s = with_publish(settings, public_snapshots=True)
    ami = registered(s, aws)
    ec2(aws).enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")
    with pytest.raises(AwsError) as err:
        publish_image(s, clients_of(s), IDENTITY, REGION, ami)
    message = str(err.value)
    assert "block public access for AMIs is block-new-sharing" in message
    assert "aws ec2 disable-image-block-public-access --region us-east-1" in message
    assert not err.value.retryable
    assert held(aws, ami)["Public"] is False and launch_permissions(aws, ami) == []
    assert volume_permissions(aws, ami) == [] and latest(aws) == ""


def test_snapshot_block_public_access_refuses_public_snapshots(
    settings: Settings, aws: str
) -> None:
    s = with_publish(settings, public_snapshots=True)
    ami = registered(s, aws)
    ec2(aws).enable_snapshot_block_public_access(State="block-all-sharing")
    with pytest.raises(AwsError) as err:
        publish_image(s, clients_of(s), IDENTITY, REGION, ami)
    message = str(err.value)
    assert "block public access for snapshots is block-all-sharing" in message
    assert "aws ec2 disable-snapshot-block-public-access --region us-east-1" in message
    assert launch_permissions(aws, ami) == [] and volume_permissions(aws, ami) == []
    # without public snapshots the same account publishes the AMI
    publish_image(settings, clients_of(settings), IDENTITY, REGION, ami)
    assert launch_permissions(aws, ami) == [{"Group": "all"}]


def test_an_older_compose_published_alongside_a_newer_one_leaves_the_newer_as_latest(
    settings: Settings, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two composes of one release published at once (two workers): the older run's write is
    overtaken by the newer one's while AWS validates it; the older run accepts that instead of
    waiting for its own value until its deadline, and "latest" names the newer AMI."""
    monkeypatch.setattr(publish, "SSM_CONFIRM_SECONDS", 10.0)
    monkeypatch.setenv(SSM_VALIDATION_DELAY, "1.0")
    old_id = dataclasses.replace(IDENTITY, compose_id="Fedora-41-20250101.0")
    new_id = dataclasses.replace(IDENTITY, sha256="cd" * 32, compose_id="Fedora-41-20250102.0")
    older = registered(settings, aws, old_id)
    renamed = dataclasses.replace(settings.image, name_template="{image_name}-2")
    newer = registered(dataclasses.replace(settings, image=renamed), aws, new_id)
    clients = clients_of(settings)
    outcome: list[BaseException | str] = []
    older_written = threading.Event()
    clients.ssm(REGION).meta.events.register(
        "after-call.ssm.PutParameter", lambda **_: older_written.set()
    )

    def publish_older() -> None:
        try:
            outcome.append(
                publish._update_latest(
                    clients.ssm(REGION), clients.ec2(REGION), settings, old_id, older, REGION
                )
            )
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=publish_older)
    thread.start()
    assert older_written.wait(10)  # the newer run writes while AWS still validates the older's
    boto3.client("ssm", region_name=REGION, endpoint_url=aws).put_parameter(
        Name=LATEST, Value=newer, Type="String", DataType="aws:ec2:image", Overwrite=True
    )
    thread.join(timeout=30)
    assert outcome == [LATEST]
    time.sleep(1.1)
    assert latest(aws) == newer
