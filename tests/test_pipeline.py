"""The whole pipeline on a compose served over HTTP, against a multi-region moto server.

The test stage here is a named test double (``passing``/``failing`` testers): the EC2 boot test
itself runs for real against a QEMU guest in tests/aws/test_boottest.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from fedimg import config
from fedimg.announce import messages_for
from fedimg.aws import limits
from fedimg.aws.clients import Clients
from fedimg.aws.image import RegisteredImage
from fedimg.aws.replicate import remove_copies
from fedimg.config import Settings
from fedimg.events import Event
from fedimg.identity import tags_of
from fedimg.pipeline import FAILED, NEEDS_INSPECTION, PASSED, Pipeline, TestSubject, TestVerdict
from fedimg.standins.samplecompose import build_sample_compose
from tests.helpers import Recorder, ec2, record, served_compose, synthetic_xz

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture(scope="module")
def compose_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A compose with x86_64 and aarch64 EC2 images (synthetic, not bootable), over HTTP."""
    with served_compose(tmp_path_factory.mktemp("compose"), 16, 0.25) as (url, _):
        yield url


def passing(subject: TestSubject) -> TestVerdict:
    return TestVerdict(PASSED, ({"name": "true", "outcome": PASSED, "output": ""},))


def failing(subject: TestSubject) -> TestVerdict:
    checks = ({"name": "true", "outcome": FAILED, "output": "1"},)
    return TestVerdict(FAILED, checks, "checks", firmware="uefi")


def broken_infrastructure(subject: TestSubject) -> TestVerdict:
    return TestVerdict(NEEDS_INSPECTION, reason="could not launch")


def make(
    settings: Settings, tester: Any = passing, regions: tuple[str, ...] = REGIONS
) -> tuple[Pipeline, list[Event], Recorder]:
    s = settings.with_aws(regions=regions)
    events: list[Event] = []
    session = boto3.session.Session()
    rec = record(session)
    return Pipeline(s, Clients(s.aws, session=session), events.append, tester), events, rec


def is_public(url: str, region: str, ami: str) -> bool:
    perms = ec2(url, region).describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    return {"Group": "all"} in perms["LaunchPermissions"]


def aws_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def test_compose_is_published_in_every_region(
    settings: Settings, compose_url: str, aws: str
) -> None:
    """Asserted on what AWS holds; with as many extra tags (of AWS's longest keys and values) as
    AWS's 50 per resource leave room for next to fedimg's own."""
    key, value = limits.TAG_KEY_MAX, limits.TAG_VALUE_MAX
    extra = {f"{n:02d}".ljust(key, "k"): "v" * value for n in range(config.MAX_EXTRA_TAGS)}
    s = dataclasses.replace(settings, image=dataclasses.replace(settings.image, tags=extra))
    pipeline, events, rec = make(s)
    outcome = pipeline.run_compose(compose_url)
    assert outcome.ok, [i.error for i in outcome.images]
    assert sorted(i.arch for i in outcome.images) == ["aarch64", "x86_64"]
    ssm = {r: boto3.client("ssm", region_name=r, endpoint_url=aws) for r in REGIONS}
    tag_counts = []
    for image in outcome.images:
        assert sorted(image.regions) == sorted(REGIONS)
        for region, ami in image.regions.items():
            assert is_public(aws, region, ami)
            (held,) = ec2(aws, region).describe_images(ImageIds=[ami])["Images"]
            deprecation = aws_time(held["CreationDate"]) + dt.timedelta(days=730)
            assert aws_time(held["DeprecationTime"]) == deprecation.replace(second=0, microsecond=0)
            name = f"/fedimg/99/Cloud_Base/{image.arch}/latest"
            assert ssm[region].get_parameter(Name=name)["Parameter"]["Value"] == ami
            (snap,) = [m["Ebs"]["SnapshotId"] for m in held["BlockDeviceMappings"]]
            (snapshot,) = ec2(aws, region).describe_snapshots(SnapshotIds=[snap])["Snapshots"]
            tag_counts += [len(held["Tags"]), len(snapshot["Tags"])]
            if region == "us-east-1":  # the base AMI boots from the snapshot fedimg uploaded
                assert tags_of(snapshot)["fedimg:state"] == "uploaded"
                assert tags_of(snapshot)["fedimg:image-name"] == image.image_name
            permissions = ec2(aws, region).describe_snapshot_attribute(
                SnapshotId=snap, Attribute="createVolumePermission"
            )["CreateVolumePermissions"]
            assert permissions == []  # public AMIs do not need public snapshots
    assert max(tag_counts) == limits.TAGS_PER_RESOURCE
    assert rec.count("ModifySnapshotAttribute") == 0
    assert rec.count("CopyImage") == 2 * (len(REGIONS) - 1)
    copies = rec.of("CopyImage")
    assert all(c["ClientToken"] and c["SourceRegion"] == "us-east-1" for c in copies)
    kinds = [(e.stage, e.status) for e in events if e.status != "progress"]
    for expected in [("upload", "started"), ("upload", "completed"), ("test", "completed")]:
        assert kinds.count(expected) == 2
    assert kinds.count(("copy", "completed")) == 4
    assert kinds.count(("publish", "completed")) == 2
    assert kinds[-1] == ("compose", "completed")
    summary = events[-1].detail
    assert {i["outcome"] for i in summary["images"]} == {"published"}


def test_adding_a_region_is_one_line_of_config(
    settings: Settings, compose_url: str, aws: str
) -> None:
    first, _, _ = make(settings)
    assert first.run_compose(compose_url).ok
    pipeline, _, rec = make(settings, regions=(*REGIONS, "ap-southeast-2"))
    outcome = pipeline.run_compose(compose_url)
    assert outcome.ok
    # only the new region was filled in: no upload, no registration, one copy per image
    assert rec.count("StartSnapshot") == 0 and rec.count("RegisterImage") == 0
    assert rec.count("CopyImage") == 2
    assert {c["Name"].split("-hvm-")[1] for c in rec.of("CopyImage")} == {"ap-southeast-2-gp3-0"}
    for image in outcome.images:
        assert is_public(aws, "ap-southeast-2", image.regions["ap-southeast-2"])
        images = ec2(aws, "ap-southeast-2").describe_images(Owners=["self"])["Images"]
        assert len(images) == 2


def test_rerun_of_a_published_compose_creates_nothing(
    settings: Settings, compose_url: str, aws: str
) -> None:
    first, _, _ = make(settings)
    before = first.run_compose(compose_url)
    again, _, rec = make(settings)
    after = again.run_compose(compose_url)
    assert after.ok
    assert [i.regions for i in after.images] == [i.regions for i in before.images]
    for op in ("StartSnapshot", "RegisterImage", "CopyImage"):
        assert rec.count(op) == 0, op


@dataclasses.dataclass
class CopyWatcher:
    """A tester that first waits (bounded) for the image's copies to appear in every other
    region, and notes what AWS held then: copies, and whether anything was public."""

    aws: str
    verdict: Any = passing
    copies_seen: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    public_seen: list[str] = dataclasses.field(default_factory=list)
    subjects: dict[str, TestSubject] = dataclasses.field(default_factory=dict)

    def __call__(self, subject: TestSubject) -> TestVerdict:
        end = time.monotonic() + 10
        while len(copies := self.copies(subject)) < len(REGIONS) - 1 and time.monotonic() < end:
            time.sleep(0.05)
        self.copies_seen[subject.identity.arch] = copies
        self.subjects[subject.identity.arch] = subject
        self.public_seen += [
            i["ImageId"]
            for r in REGIONS
            for i in ec2(self.aws, r).describe_images(Owners=["self"])["Images"]
            if is_public(self.aws, r, i["ImageId"])
        ]
        return cast(TestVerdict, self.verdict(subject))

    def copies(self, subject: TestSubject) -> list[str]:
        mine = [
            {"Name": "tag:fedimg:image-key", "Values": [subject.identity.key]},
            {"Name": "tag:fedimg:role", "Values": ["copy"]},
        ]
        return [
            i["ImageId"]
            for r in REGIONS[1:]
            for i in ec2(self.aws, r).describe_images(Owners=["self"], Filters=mine)["Images"]
        ]


def test_copies_run_while_the_image_is_tested_and_are_published_after_it_passed(
    settings: Settings, compose_url: str, aws: str
) -> None:
    watcher = CopyWatcher(aws)
    pipeline, events, _ = make(settings, watcher)
    outcome = pipeline.run_compose(compose_url)
    assert outcome.ok, [i.error for i in outcome.images]
    # AWS held both copies of each image while it was tested, and nothing was public yet
    assert {arch: len(c) for arch, c in watcher.copies_seen.items()} == {"x86_64": 2, "aarch64": 2}
    assert watcher.public_seen == []
    for image in outcome.images:
        copies = sorted(ami for r, ami in image.regions.items() if r != "us-east-1")
        assert copies == sorted(watcher.copies_seen[image.arch])
        order = [(e.stage, e.status) for e in events if e.image == image.image_name]
        tested = order.index(("test", "completed"))
        assert order.index(("copy", "started")) < tested < order.index(("publish", "started"))
    assert all(messages_for(e) is not None for e in events)  # every event makes its bus message


def test_failed_test_removes_the_copies_and_publishes_nothing(
    settings: Settings, compose_url: str, aws: str
) -> None:
    watcher = CopyWatcher(aws, failing)
    pipeline, events, rec = make(settings, watcher)
    outcome = pipeline.run_compose(compose_url)
    assert {i.status for i in outcome.images} == {"test-failed"}
    assert not outcome.retryable
    assert [len(c) for c in watcher.copies_seen.values()] == [2, 2]  # made, then removed
    assert rec.count("ModifyImageAttribute") == 0
    for region in REGIONS[1:]:
        assert ec2(aws, region).describe_images(Owners=["self"])["Images"] == []
        assert ec2(aws, region).describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    for image in outcome.images:
        assert not is_public(aws, "us-east-1", image.base_ami)
        subject = watcher.subjects[image.arch]
        base = RegisteredImage(subject.ami, subject.region, "", True)
        assert remove_copies(pipeline.clients, subject.identity, base, REGIONS) == []  # idempotent
    assert ("publish", "started") not in [(e.stage, e.status) for e in events]


def test_a_test_that_passes_after_a_failed_one_copies_again(
    settings: Settings, compose_url: str, aws: str
) -> None:
    """The removed copies' ClientTokens are not reused: AWS would answer with removed ids."""
    failed, _, _ = make(settings, CopyWatcher(aws, failing))
    assert not failed.run_compose(compose_url).ok
    pipeline, _, rec = make(settings)
    outcome = pipeline.run_compose(compose_url)
    assert outcome.ok, [i.error for i in outcome.images]
    assert rec.count("CopyImage") == 4
    for image in outcome.images:
        for region, ami in image.regions.items():
            assert is_public(aws, region, ami)


def test_failed_test_can_be_configured_not_to_block(
    settings: Settings, compose_url: str, aws: str
) -> None:
    s = dataclasses.replace(settings, test=dataclasses.replace(settings.test, block_publish=False))
    pipeline, _, _ = make(s, failing)
    assert pipeline.run_compose(compose_url).ok


def test_untestable_image_is_not_published_and_is_retryable(
    settings: Settings, compose_url: str, aws: str
) -> None:
    pipeline, _, rec = make(settings, broken_infrastructure)
    outcome = pipeline.run_compose(compose_url)
    assert outcome.retryable and not outcome.ok
    assert rec.count("ModifyImageAttribute") == 0


def test_one_bad_image_does_not_stop_the_other(
    settings: Settings, tmp_path: Path, aws: str
) -> None:
    xz = synthetic_xz(tmp_path, 8, 0.5)
    location = build_sample_compose(tmp_path / "tree", xz, arches=("x86_64", "aarch64"))
    aarch64 = next(location.glob("Cloud/aarch64/images/*AmazonEC2*.raw.xz"))
    aarch64.unlink()
    aarch64.write_bytes(xz.read_bytes()[:-100])  # truncated: wrong checksum and broken archive
    pipeline, events, _ = make(settings)
    outcome = pipeline.run_compose(str(location))
    by_arch = {i.arch: i for i in outcome.images}
    assert by_arch["x86_64"].status == "published"
    assert by_arch["aarch64"].status == "failed" and not by_arch["aarch64"].retryable
    assert ("upload", "failed") in [(e.stage, e.status) for e in events]
    assert (
        ec2(aws).describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": ["*aarch64*"]}]
        )["Images"]
        == []
    )


def test_test_results_go_to_resultsdb(settings: Settings, compose_url: str, aws: str) -> None:
    from fedimg.report import ResultsReporter, fetch_results
    from fedimg.standins.resultsdb import resultsdb_standin

    with resultsdb_standin() as url:
        s = dataclasses.replace(
            settings, resultsdb=dataclasses.replace(settings.resultsdb, url=url)
        )
        pipeline, _, _ = make(s, failing)
        pipeline.reporter = ResultsReporter(s.resultsdb)
        outcome = pipeline.run_compose(compose_url)
        rows = fetch_results(url, outcome.compose_id)
    assert sorted((r.testcase, r.outcome) for r in rows) == [
        ("fedimg.ami.boot", "FAILED"),
        ("fedimg.ami.boot", "FAILED"),
    ]
    assert {(r.ami, r.architecture) for r in rows} == {(i.base_ami, i.arch) for i in outcome.images}
    assert {r.architecture for r in rows} == {"x86_64", "aarch64"}
    assert {r.region for r in rows} == {"us-east-1"}
    assert {r.firmware for r in rows} == {"uefi"}  # how the instance booted, from the tester


def test_a_report_that_cannot_be_built_never_blocks_publishing(
    settings: Settings, compose_url: str, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedimg.config import ResultsDBSettings
    from fedimg.report import ImageRef, ResultsReporter

    def missing_key(cls: type[ImageRef], image: Any) -> ImageRef:
        raise KeyError("format")

    monkeypatch.setattr(ImageRef, "from_productmd", classmethod(missing_key))
    pipeline, _, _ = make(settings, regions=("us-east-1",))
    # enabled, and never reached: the report fails before anything is sent
    pipeline.reporter = ResultsReporter(ResultsDBSettings(url="http://127.0.0.1:9/"))
    outcome = pipeline.run_compose(compose_url)
    assert outcome.ok, [i.error for i in outcome.images]
