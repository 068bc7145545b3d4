"""AMIs as fedimg leaves them in the strict stand-in, for the catalog's tests.

Each AMI boots from a real EBS-direct snapshot of one block (one per region, as AMIs may share a
snapshot) and carries the tags fedimg records; published ones are public, at most five per region
(the stand-in enforces AWS's default public-AMI quota). Next to them: what the catalog must leave
out.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from fedimg.composekind import Kind, kind_tags
from fedimg.config import Settings, validate
from fedimg.identity import TAG_COMPOSE, TAG_MANAGED, TAG_NAME, tag_list
from fedimg.source import BLOCK_SIZE
from fedimg.standins.moto import reset
from tests.helpers import ebs, ec2

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
SNAPSHOT_DEADLINE_S = 10.0


@dataclass(frozen=True)
class Published:
    """One image of one compose, as fedimg publishes it."""

    compose_id: str
    image_name: str  # without the architecture
    release: str
    kind: Kind | None  # None: made before fedimg recorded the kind (only the compose id tag)
    regions: dict[str, tuple[str, ...]]  # AWS architecture -> regions
    subvariant: str = "Cloud_Base"


# In the order the catalog must show them: the newest GA first.
PUBLISHED = (
    Published(
        "Fedora-Cloud-42-20250410.0",
        "Fedora-Cloud-Base-AmazonEC2-42-1.1",
        "42",
        Kind.GA,
        {"arm64": ("us-east-1", "eu-west-1"), "x86_64": REGIONS},
    ),
    Published(
        "Fedora-Cloud-41-20241027.0",
        "Fedora-Cloud-Base-AmazonEC2-41-1.4",
        "41",
        None,
        {"x86_64": ("us-east-1",)},
    ),
    Published(
        "Fedora-Cloud-43-20250916.0",
        "Fedora-Cloud-Base-AmazonEC2-43_Beta-1.3",
        "43",
        Kind.PRERELEASE,
        {"x86_64": ("us-west-2", "eu-west-1")},
    ),
    Published(
        "Fedora-Cloud-Rawhide-20251101.n.0",
        "Fedora-Cloud-Base-AmazonEC2-Rawhide-20251101.n.0",
        "Rawhide",
        Kind.NIGHTLY,
        {"arm64": ("us-east-1",), "x86_64": ("us-east-1",)},
    ),
)
AWS_TO_FEDORA_ARCH = {"x86_64": "x86_64", "arm64": "aarch64"}


@dataclass
class CatalogWorld:
    settings: Settings
    listed: dict[str, str] = field(default_factory=dict)  # AMI id -> region, the catalog's
    left_out: dict[str, str] = field(default_factory=dict)  # AMI id -> why it is not listed
    unknown: str = ""  # the AMI fedimg cannot classify


def world_settings(url: str) -> Settings:
    s = Settings()
    return validate(
        dataclasses.replace(
            s,
            aws=dataclasses.replace(s.aws, endpoint_url=url, max_attempts=2, regions=REGIONS),
        )
    )


def one_block_snapshot(url: str, region: str) -> str:
    """A completed EBS-direct snapshot of one non-zero block, sent as fedimg sends blocks."""
    client = ebs(url, region)
    snapshot = client.start_snapshot(VolumeSize=1, Timeout=60)["SnapshotId"]
    block = b"\x01" * BLOCK_SIZE
    digest = hashlib.sha256(block).digest()
    client.put_snapshot_block(
        SnapshotId=snapshot,
        BlockIndex=0,
        BlockData=block,
        DataLength=BLOCK_SIZE,
        Checksum=base64.b64encode(digest).decode(),
        ChecksumAlgorithm="SHA256",
    )
    client.complete_snapshot(
        SnapshotId=snapshot,
        ChangedBlocksCount=1,
        Checksum=base64.b64encode(hashlib.sha256(digest).digest()).decode(),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    deadline = time.monotonic() + SNAPSHOT_DEADLINE_S
    while (
        ec2(url, region).describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"]
        != "completed"
    ):
        assert time.monotonic() < deadline, f"{snapshot} not completed"
        time.sleep(0.1)
    return str(snapshot)


def register(
    url: str,
    region: str,
    snapshot: str,
    name: str,
    tags: dict[str, str],
    *,
    arch: str = "x86_64",
    public: bool = True,
) -> str:
    client = ec2(url, region)
    params: dict[str, Any] = {
        "Name": name,
        "Architecture": arch,
        "VirtualizationType": "hvm",
        "RootDeviceName": "/dev/sda1",
        "BootMode": "uefi-preferred" if arch == "x86_64" else "uefi",
        "EnaSupport": True,
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3"}}
        ],
    }
    if tags:
        params["TagSpecifications"] = [{"ResourceType": "image", "Tags": tag_list(tags)}]
    ami = str(client.register_image(**params)["ImageId"])
    if public:
        client.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    return ami


def fedimg_tags(p: Published, image_name: str) -> dict[str, str]:
    tags = {TAG_MANAGED: "true", TAG_NAME: image_name, TAG_COMPOSE: p.compose_id}
    if p.kind is not None:
        tags |= kind_tags(p.kind, p.release, p.subvariant)
    return tags


def make_world(url: str) -> CatalogWorld:
    """Resets the stand-in and fills it."""
    reset(url)
    w = CatalogWorld(world_settings(url))
    snapshots = {r: one_block_snapshot(url, r) for r in (*REGIONS, "ap-south-1")}
    for p in PUBLISHED:
        for arch, regions in p.regions.items():
            image_name = f"{p.image_name}.{AWS_TO_FEDORA_ARCH[arch]}"
            for region in regions:
                name = f"{image_name}-hvm-{region}-gp3-0"
                tags = fedimg_tags(p, image_name)
                ami = register(url, region, snapshots[region], name, tags, arch=arch)
                w.listed[ami] = region
    managed_only = {TAG_MANAGED: "true"}
    w.unknown = register(url, "us-west-2", snapshots["us-west-2"], "handmade", managed_only)
    w.listed[w.unknown] = "us-west-2"

    ga = PUBLISHED[0]
    ga_x86 = f"{ga.image_name}.x86_64"
    untested = register(
        url,
        "eu-west-1",
        snapshots["eu-west-1"],
        f"{ga_x86}-untested",
        fedimg_tags(ga, ga_x86),
        public=False,
    )
    w.left_out[untested] = "fedimg's, never made public (e.g. its boot test failed)"
    foreign = register(url, "us-west-2", snapshots["us-west-2"], "someone-elses", {})
    w.left_out[foreign] = "public, not fedimg's"
    elsewhere = register(
        url,
        "ap-south-1",
        snapshots["ap-south-1"],
        f"{ga_x86}-hvm-ap-south-1-gp3-0",
        fedimg_tags(ga, ga_x86),
    )
    w.left_out[elsewhere] = "in a region fedimg is not configured for"
    return w
