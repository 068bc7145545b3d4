"""What an image is, independent of where it is: the key by which every stage finds its own work.

AWS resource tags are fedimg's state. Every snapshot, AMI and test resource carries
``fedimg:image-key`` (derived from the image's name and published checksum), so a re-run finds what
an earlier, possibly crashed, run made instead of making it again.

The key names the *content*: without the checksum two different files of one name would share a
key, and one would be published as the other. So an identity without a checksum is provisional:
``upload_image`` computes the checksum first (one extra read of the file) and works only with a
complete identity; ``ImageIdentity.complete`` tells which is which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fedimg.composekind import Kind, kind_tags
from fedimg.errors import InputError

TAG_KEY = "fedimg:image-key"
TAG_NAME = "fedimg:image-name"
TAG_SHA256 = "fedimg:sha256"
TAG_COMPOSE = "fedimg:compose-id"
TAG_STATE = "fedimg:state"
TAG_ROLE = "fedimg:role"
TAG_TEST_RUN = "fedimg:test-run"
TAG_TESTED_AMI = "fedimg:ami"
# Every resource fedimg creates carries this tag, for `fedimg gc`.
TAG_MANAGED = "fedimg:managed"

AWS_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}


@dataclass(frozen=True)
class ImageIdentity:
    image_name: str
    arch: str  # Fedora's name: x86_64 | aarch64
    sha256: str = ""  # of the file as published; "" when unknown
    compose_id: str = ""
    release: str = ""
    subvariant: str = ""
    url: str = ""
    # composekind.Kind's value for the compose ("" when not from a compose): recorded as tags.
    compose_kind: str = ""

    def __post_init__(self) -> None:
        if self.arch not in AWS_ARCH:
            raise InputError(f"{self.image_name}: unsupported architecture {self.arch!r}")

    @property
    def complete(self) -> bool:
        """Whether the content is known, so that the key can decide reuse."""
        return bool(self.sha256)

    @property
    def key(self) -> str:
        """Stable across runs: the same published file always gets the same key."""
        return hashlib.sha256(f"{self.image_name}\0{self.sha256}".encode()).hexdigest()[:32]

    @property
    def aws_arch(self) -> str:
        return AWS_ARCH[self.arch]

    def content_tags(self) -> dict[str, str]:
        """The tags that depend on the image's content only: every run of it sends the same."""
        tags = {
            "Name": self.image_name,
            TAG_MANAGED: "true",
            TAG_KEY: self.key,
            TAG_NAME: self.image_name,
        }
        if self.sha256:
            tags[TAG_SHA256] = self.sha256
        return tags

    def tags(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        tags = dict(extra or {})
        tags.update(self.content_tags())
        if self.compose_id:
            tags[TAG_COMPOSE] = self.compose_id
        if self.compose_kind:
            tags.update(kind_tags(Kind(self.compose_kind), self.release, self.subvariant))
        return tags


def arch_from_name(name: str) -> str:
    """Fedora file names carry the architecture: ``…-41-1.4.x86_64.raw.xz``."""
    for arch in AWS_ARCH:
        if f".{arch}." in f".{name}." or name.endswith(f".{arch}"):
            return arch
    if ".arm64." in f".{name}.":
        return "aarch64"
    raise InputError(f"{name}: cannot tell the architecture from the file name; pass --arch")


def tags_of(resource: Any) -> dict[str, str]:
    """The tags of a described AWS resource (snapshot, image, instance …) as a dict."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) if "Key" in t}


def tag_list(tags: dict[str, str]) -> list[Any]:
    """AWS's Key/Value list form (typed loosely: each service has its own TagTypeDef)."""
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
