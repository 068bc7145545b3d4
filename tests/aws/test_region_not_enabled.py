"""A region the account has not enabled: its errors say so and how to fix it, and a run fails
only that region (the stand-in refuses EC2 there with AuthFailure, as AWS does)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from fedimg.aws.clients import Clients, translate
from fedimg.config import Settings
from fedimg.events import Event
from fedimg.pipeline import PASSED, Pipeline, TestSubject, TestVerdict
from fedimg.standins.aws import options
from tests.helpers import ec2, record, served_compose

OFF = "eu-west-1"  # in the settings fixture's aws.regions, not enabled in these tests


@pytest.fixture
def region_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(options.DISABLED_REGIONS, OFF)


@pytest.fixture(scope="module")
def compose_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A compose with x86_64 and aarch64 EC2 images (synthetic, not bootable), over HTTP."""
    with served_compose(tmp_path_factory.mktemp("compose"), 8, 0.25) as (url, _):
        yield url


def passing(subject: TestSubject) -> TestVerdict:
    return TestVerdict(PASSED)


def test_a_request_in_a_region_not_enabled_names_the_region_and_the_fix(
    settings: Settings, region_off: None
) -> None:
    session = boto3.session.Session()
    rec = record(session)
    clients = Clients(settings.aws, session=session)
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            clients.ec2(OFF).describe_images(Owners=["self"])
        error = translate(caught.value, f"images in {OFF}")
        assert str(error) == (
            f"images in {OFF}: AuthFailure: region {OFF} is not enabled for this account "
            f"(opt-in status not-opted-in): enable it (aws account enable-region --region-name "
            f"{OFF}) or remove it from aws.regions"
        )
        assert not error.retryable
    # asked once, of the base region, and remembered
    (asked,) = rec.of("DescribeRegions")
    assert asked == {"RegionNames": [OFF], "AllRegions": True}


def test_an_auth_failure_in_an_enabled_region_keeps_aws_answer(
    settings: Settings, aws: str
) -> None:
    """AuthFailure also means other things (here: a block device mapping that is not ours)."""
    clients = Clients(settings.aws)
    ami = ec2(aws, OFF).register_image(Name="someone-elses", RootDeviceName="/dev/sda1")
    with pytest.raises(ClientError) as caught:
        clients.ec2(OFF).describe_image_attribute(
            ImageId=ami["ImageId"], Attribute="blockDeviceMapping"
        )
    assert caught.value.response["Error"]["Code"] == "AuthFailure"
    assert "not enabled" not in str(caught.value)


def test_a_run_fails_only_the_region_not_enabled(
    settings: Settings, compose_url: str, aws: str, region_off: None
) -> None:
    events: list[Event] = []
    pipeline = Pipeline(settings, Clients(settings.aws), events.append, passing)
    outcome = pipeline.run_compose(compose_url)
    enabled = sorted(r for r in settings.aws.regions if r != OFF)
    assert len(outcome.images) == 2
    for image in outcome.images:
        assert sorted(image.regions) == enabled  # copied and published
        for region, ami in image.regions.items():
            perms = ec2(aws, region).describe_image_attribute(
                ImageId=ami, Attribute="launchPermission"
            )["LaunchPermissions"]
            assert perms == [{"Group": "all"}]
        assert f"{OFF}: " in image.error
        assert f"region {OFF} is not enabled for this account" in image.error
        assert not image.retryable  # no redelivery can help before the region is enabled
    failed = [e for e in events if e.status == "failed" and e.region == OFF]
    assert failed and all("is not enabled" in e.detail["error"] for e in failed)
