"""The base AMI is copied to every other configured region, concurrently, while it is tested.

Copies start as soon as the base AMI is available and stay private; the pipeline publishes them
once the test has passed, and a failed test has them removed (``remove_copies``). ``CopyRound``
runs one image's copies on a thread pool; the AWS steps below are each safe to re-run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.image import (
    RegisteredImage,
    ami_description,
    ami_name,
    find_image,
)
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.errors import FedimgError, TransientError
from fedimg.identity import TAG_KEY, TAG_ROLE, ImageIdentity, tag_list, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

# A fresh copy's id can be unknown to CreateTags for a while (eventual consistency).
TAG_VISIBLE_DEADLINE_S = 120.0
TAG_SOURCE_AMI = "fedimg:source-ami"
# On the base AMI: how many times its copies were removed after a failed test. It is part of the
# copies' ClientToken, so that copying again after a removal is a new request: AWS answers a
# repeated token with the removed copy's id.
TAG_COPY_ROUND = "fedimg:copy-round"
# Answers meaning the resource is already gone.
GONE = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound"})


class CopyCancelled(FedimgError):
    """The wait for a copy was stopped: the test's verdict made the copy unneeded."""


def copy_token(identity: ImageIdentity, source_ami: str, region: str, copy_round: int = 0) -> str:
    """Deterministic: a retried or re-run CopyImage for the same copy is the same request."""
    suffix = f"/{copy_round}" if copy_round else ""
    return hashlib.sha256(f"{identity.key}/{source_ami}/{region}{suffix}".encode()).hexdigest()[:64]


def copy_round(clients: Clients, source: RegisteredImage) -> int:
    """The base AMI's copy round (0 until copies were first removed)."""
    ec2 = clients.ec2(source.region)
    try:
        images = ec2.describe_images(ImageIds=[source.ami])["Images"]
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"copy round of {source.ami}") from e
    value = tags_of(images[0]).get(TAG_COPY_ROUND, "0") if images else "0"
    return int(value) if value.isdigit() else 0


def copy_tags(settings: Settings, identity: ImageIdentity, source: RegisteredImage) -> list[Any]:
    return tag_list(
        identity.tags(settings.image.tags)
        | {TAG_ROLE: "copy", TAG_SOURCE_AMI: source.ami, "fedimg:source-region": source.region}
    )


def start_copy_if_not_exists(
    settings: Settings,
    clients: Clients,
    identity: ImageIdentity,
    source: RegisteredImage,
    region: str,
    copy_round: int = 0,
) -> RegisteredImage:
    """Starts copying the base AMI into ``region`` unless a copy is already there; returns at
    once (the copy may still be pending).

    Safe to re-run: CopyImage does not enforce unique names, so the copy is looked up (by tag or
    name) first; the ClientToken makes a retried request idempotent; a new copy is tagged by
    CopyImage itself, a found one gets its tags re-applied. Name and description are
    RegisterImage's, within AWS's limits (limits.py): a name AWS would refuse is an InputError
    before any request.
    """
    ec2 = clients.ec2(region)
    name = ami_name(settings, identity, region)  # checked against limits.AMI_NAME_RE
    tags = copy_tags(settings, identity, source)
    try:
        ami = find_image(ec2, identity, name)
        reused = ami is not None
        if ami is None:
            ami = ec2.copy_image(
                SourceRegion=source.region,
                SourceImageId=source.ami,
                Name=name,
                Description=ami_description(identity),
                ClientToken=copy_token(identity, source.ami, region, copy_round),
                CopyImageTags=True,
                # Tagged in the same call, the copy and its new snapshots are fedimg's from the
                # start: iam-policy.json allows CopyImage only with fedimg:managed in the request.
                TagSpecifications=[
                    {"ResourceType": "image", "Tags": tags},
                    {"ResourceType": "snapshot", "Tags": tags},
                ],
            )["ImageId"]
            log.info("%s: copying %s to %s as %s", identity.image_name, source.ami, region, ami)
        else:
            tag_when_visible(ec2, ami, tags)  # a found copy: its tags re-applied
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"copy of {source.ami} to {region}") from e
    return RegisteredImage(ami, region, name, reused)


def wait_copy_available(
    settings: Settings,
    clients: Clients,
    copy: RegisteredImage,
    stop: threading.Event | None = None,
) -> None:
    """Waits (up to ``aws.wait_seconds``) for the copy to be available; CopyCancelled as soon as
    ``stop`` is set."""
    ec2 = clients.ec2(copy.region)
    stop = stop or threading.Event()

    def state() -> str:
        if stop.is_set():
            raise CopyCancelled(f"copy {copy.ami} in {copy.region}: no longer needed")
        images = ec2.describe_images(ImageIds=[copy.ami])["Images"]
        return images[0].get("State", "") if images else ""

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a cancelled wait ends at once, not at the next poll

    what = f"copy {copy.ami} in {copy.region}"
    try:
        wait_until(what, state, done="available", deadline_s=settings.aws.wait_seconds, sleep=pause)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e


def copy_image_if_not_exists(
    settings: Settings,
    clients: Clients,
    identity: ImageIdentity,
    source: RegisteredImage,
    region: str,
) -> RegisteredImage:
    """Copies the base AMI into ``region`` unless a copy is already there, and waits for it."""
    copy = start_copy_if_not_exists(
        settings, clients, identity, source, region, copy_round(clients, source)
    )
    wait_copy_available(settings, clients, copy)
    return copy


def tag_when_visible(ec2: EC2Client, resource: str, tags: list[Any]) -> None:
    """CreateTags, waiting (bounded) while the new id is not yet known."""
    end = time.monotonic() + TAG_VISIBLE_DEADLINE_S
    delay = 0.5
    while True:
        try:
            ec2.create_tags(Resources=[resource], Tags=tags)
            return
        except ClientError as e:
            if not error_code(e).endswith(".NotFound"):
                raise
            if time.monotonic() > end:
                raise TransientError(
                    f"{resource}: still unknown after {TAG_VISIBLE_DEADLINE_S}s"
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def remove_copies(
    clients: Clients, identity: ImageIdentity, source: RegisteredImage, regions: Sequence[str]
) -> list[str]:
    """Deregisters the private copies of ``source`` in ``regions`` and deletes their snapshots;
    returns the AMI ids removed. A copy still pending is deregistered too (that stops it).

    Safe to re-run, and what finishes a run killed half-way: copies and snapshots are found by
    their tags, whatever was left; gone ones are skipped. The copy round on the base AMI goes up
    first, so a later run that copies again makes new copies instead of getting the removed ones'
    ids back for their ClientTokens. A copy someone can launch (published earlier) is kept.
    """
    base = clients.ec2(source.region)
    what = f"removing the copies of {source.ami}"
    try:
        next_round = copy_round(clients, source) + 1
        base.create_tags(Resources=[source.ami], Tags=tag_list({TAG_COPY_ROUND: str(next_round)}))
        removed: list[str] = []
        for region in regions:
            if region != source.region:
                removed += _remove_copies_in(clients.ec2(region), identity, source)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    return removed


def _remove_copies_in(
    ec2: EC2Client, identity: ImageIdentity, source: RegisteredImage
) -> list[str]:
    mine = [
        {"Name": f"tag:{TAG_KEY}", "Values": [identity.key]},
        {"Name": f"tag:{TAG_ROLE}", "Values": ["copy"]},
        {"Name": f"tag:{TAG_SOURCE_AMI}", "Values": [source.ami]},
    ]
    removed, kept = [], set()
    for image in ec2.describe_images(Owners=["self"], Filters=mine)["Images"]:  # type: ignore[arg-type]
        ami = image["ImageId"]
        if _launchable_by_others(ec2, ami):
            kept |= {
                m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m
            }
            continue
        _unless_gone(lambda ami=ami: ec2.deregister_image(ImageId=ami))  # type: ignore[misc]
        removed.append(ami)
    for snapshot in ec2.describe_snapshots(OwnerIds=["self"], Filters=mine)["Snapshots"]:  # type: ignore[arg-type]
        if snapshot["SnapshotId"] not in kept:
            _unless_gone(lambda s=snapshot["SnapshotId"]: ec2.delete_snapshot(SnapshotId=s))  # type: ignore[misc]
    return removed


def _launchable_by_others(ec2: EC2Client, ami: str) -> bool:
    try:
        perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
    except ClientError as e:
        if error_code(e) in GONE:
            return False
        raise
    return bool(perms.get("LaunchPermissions"))


def _unless_gone(call: Callable[[], object]) -> None:
    try:
        call()
    except ClientError as e:
        if error_code(e) not in GONE:
            raise


# (region, status, detail): how a CopyRound reports each copy's start, end or failure.
CopyReport = Callable[[str, str, dict[str, Any]], None]


class CopyRound:
    """One image's copies into ``regions`` (the source's own region left out), started at once
    on a pool of ``aws.copy_workers`` threads; each thread starts its copy and waits for it."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        identity: ImageIdentity,
        source: RegisteredImage,
        regions: Sequence[str],
        report: CopyReport,
    ) -> None:
        self.settings, self.clients, self.identity, self.source = (
            settings,
            clients,
            identity,
            source,
        )
        self._report = report
        self._stop = threading.Event()
        others = [r for r in regions if r != source.region]
        self._pool = ThreadPoolExecutor(max(1, min(len(others), settings.aws.copy_workers)))
        round_ = copy_round(clients, source) if others else 0
        self.copies: dict[str, Future[RegisteredImage]] = {
            region: self._pool.submit(self._copy, region, round_) for region in others
        }

    def _copy(self, region: str, round_: int) -> RegisteredImage:
        origin = {"source_ami": self.source.ami, "source_region": self.source.region}
        try:
            copy = start_copy_if_not_exists(
                self.settings, self.clients, self.identity, self.source, region, round_
            )
            self._report(region, "started", {"ami": copy.ami} | origin)
            wait_copy_available(self.settings, self.clients, copy, self._stop)
        except CopyCancelled:
            raise
        except FedimgError as e:
            self._report(region, "failed", {"error": str(e)} | origin)
            raise
        self._report(region, "completed", {"ami": copy.ami} | origin)
        return copy

    def as_they_end(self) -> Iterator[tuple[str, RegisteredImage | FedimgError]]:
        """(region, its copy or the error that ended it), each as soon as it has ended."""
        region_of = {future: region for region, future in self.copies.items()}
        for future in as_completed(region_of):
            error = future.exception()
            if error is None:
                yield region_of[future], future.result()
            elif isinstance(error, FedimgError):
                yield region_of[future], error
            else:
                raise error

    def stop(self) -> None:
        """Stops waiting for the copies (AWS goes on copying) and ends the threads."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
