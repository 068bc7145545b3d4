"""Messages about one image going through fedimg's stages: upload, test, copy, publish.

Each body keeps the fields the original fedimg sent (``image_url``, ``image_name``,
``destination``, ``service``, ``compose``, ``status``, ``extra``) next to typed ones
(``compose_id``, ``arch``, ``subvariant``, ``release``, ``region``, ``ami``…).
"""

from __future__ import annotations

from typing import Any

from fedimg_messages.base import (
    AMI_ID,
    NONEMPTY,
    REGION,
    REGION_AMIS,
    SNAPSHOT_ID,
    STATUSES,
    FedimgMessage,
    required_when,
    schema,
)

OUTCOMES = ("PASSED", "FAILED", "NEEDS_INSPECTION", "INFO")

# Fields of every image message.
_IMAGE: dict[str, Any] = {
    "image_name": {**NONEMPTY, "description": "The image's name (its file name without suffixes)."},
    "image_url": {"type": "string", "description": "Where fedimg fetched the image from."},
    "compose_id": {"type": "string", "description": "The compose the image came from, or ''."},
    "compose": {"type": "string", "description": "Same as compose_id (original fedimg field)."},
    "arch": {"type": "string", "description": "The image's architecture (x86_64, aarch64)."},
    "subvariant": {"type": "string", "description": "The image's subvariant (Cloud_Base)."},
    "release": {"type": "string", "description": "The Fedora release ('43'), or ''."},
    "status": {"enum": list(STATUSES)},
    "service": {"const": "EC2", "description": "Always EC2 (original fedimg field)."},
    "error": {"type": "string", "description": "Why the stage failed (failed only)."},
    "extra": {
        "type": "object",
        "description": "Original fedimg details: virt_type, vol_type, id (the AMI id).",
        "properties": {
            "virt_type": {"const": "hvm"},
            "vol_type": {"type": "string"},
            "id": AMI_ID,
            "source_image_id": AMI_ID,
        },
    },
}
# Fields of messages about one region.
_REGIONAL: dict[str, Any] = {
    "region": {**REGION, "description": "The AWS region."},
    "destination": {**REGION, "description": "Same as region (original fedimg field)."},
}
_OPTIONAL = ("error",)


class ImageMessage(FedimgMessage):
    """Shared accessors of the image messages; never sent itself."""

    @property
    def image_name(self) -> str:
        return str(self.body["image_name"])

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def region(self) -> str:
        return str(self.body.get("region", ""))

    @property
    def ami(self) -> str:
        return str(self.body.get("ami", ""))

    @property
    def url(self) -> str | None:
        if not (self.ami and self.region):
            return None
        return (
            f"https://{self.region}.console.aws.amazon.com/ec2/home?region={self.region}"
            f"#ImageDetails:imageId={self.ami}"
        )

    def _describe(self, *keys: str) -> str:
        lines = [
            f"\t{key}: {self.body[key]}" for key in keys if self.body.get(key) not in (None, "")
        ]
        return "\n".join(lines) + "\n"

    def _failed(self) -> str:
        error = self.body.get("error")
        return f": {error}" if error else ""


class ImageUploadV1(ImageMessage):
    """An image is being uploaded and registered as an AMI in the base region."""

    topic = "fedimg.image.upload"
    body_schema = schema(
        topic,
        "fedimg uploads an image and registers it as an AMI in its base region.",
        {
            **_IMAGE,
            **_REGIONAL,
            "ami": {**AMI_ID, "description": "The registered AMI (completed only)."},
            "snapshot": {**SNAPSHOT_ID, "description": "The AMI's EBS snapshot (completed only)."},
        },
        optional=(*_OPTIONAL, "ami", "snapshot"),
        allOf=[required_when("completed", "ami", "snapshot")],
    )

    @property
    def summary(self) -> str:
        if self.status == "started":
            return f"fedimg started uploading {self.image_name} to {self.region}"
        if self.status == "completed":
            return f"fedimg uploaded {self.image_name} to {self.region} as {self.ami}"
        return f"fedimg failed to upload {self.image_name} to {self.region}{self._failed()}"

    def __str__(self) -> str:
        return f"{self.summary}\n\n" + self._describe(
            "compose_id", "image_url", "arch", "subvariant", "release", "ami", "snapshot", "error"
        )


class ImageTestV1(ImageMessage):
    """An image is being boot-tested (on an EC2 instance, or locally under QEMU)."""

    topic = "fedimg.image.test"
    body_schema = schema(
        topic,
        "fedimg boots an image and runs checks in it.",
        {
            **_IMAGE,
            **_REGIONAL,
            "ami": {**AMI_ID, "description": "The AMI under test (ec2 tests)."},
            "kind": {"enum": ["ec2", "local"], "description": "EC2 instance or local QEMU."},
            "firmware": {"enum": ["", "bios", "uefi"], "description": "How it booted, if known."},
            "outcome": {"enum": list(OUTCOMES), "description": "The overall test outcome."},
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": NONEMPTY,
                        "outcome": {"enum": list(OUTCOMES)},
                        "output": {"type": "string"},
                    },
                    "required": ["name", "outcome", "output"],
                },
            },
        },
        optional=(*_OPTIONAL, "ami", "firmware", "outcome", "checks"),
        allOf=[required_when("completed", "outcome", "checks")],
    )

    @property
    def outcome(self) -> str:
        return str(self.body.get("outcome", ""))

    @property
    def summary(self) -> str:
        what = f"{self.image_name} ({self.body['kind']} in {self.region})"
        if self.status == "started":
            return f"fedimg started testing {what}"
        if self.status == "completed":
            return f"fedimg tested {what}: {self.outcome}"
        return f"fedimg could not test {what}{self._failed()}"

    def __str__(self) -> str:
        text = f"{self.summary}\n\n" + self._describe(
            "compose_id", "arch", "subvariant", "release", "ami", "firmware", "outcome", "error"
        )
        for check in self.body.get("checks", []):
            text += f"\tcheck {check['name']}: {check['outcome']}\n"
        return text


class ImageCopyV1(ImageMessage):
    """An AMI was copied from the base region to another region."""

    topic = "fedimg.image.copy"
    body_schema = schema(
        topic,
        "fedimg copies an AMI from its base region to another region.",
        {
            **_IMAGE,
            **_REGIONAL,
            "ami": {**AMI_ID, "description": "The copy in the destination region."},
            "source_ami": {**AMI_ID, "description": "The AMI that was copied."},
            "source_region": {**REGION, "description": "The region of source_ami."},
        },
        optional=(*_OPTIONAL, "ami"),
        allOf=[required_when("completed", "ami")],
    )

    @property
    def summary(self) -> str:
        source = f"{self.body['source_ami']} ({self.image_name})"
        if self.status == "started":
            return f"fedimg started copying {source} to {self.region}"
        if self.status == "completed":
            return f"fedimg copied {source} to {self.region} as {self.ami}"
        return f"fedimg failed to copy {source} to {self.region}{self._failed()}"

    def __str__(self) -> str:
        return f"{self.summary}\n\n" + self._describe(
            "compose_id", "arch", "subvariant", "release", "source_region", "error"
        )


class ImagePublishV1(ImageMessage):
    """An image's AMIs were made available (public or shared) in every region."""

    topic = "fedimg.image.publish"
    body_schema = schema(
        topic,
        "fedimg publishes an image's AMIs in all its regions.",
        {
            **_IMAGE,
            "regions": {**REGION_AMIS, "description": "Region → AMI id."},
            "public": {"type": "boolean", "description": "Public, or shared with accounts."},
        },
        optional=_OPTIONAL,
    )

    @property
    def regions(self) -> dict[str, str]:
        return dict(self.body["regions"])

    @property
    def summary(self) -> str:
        how = "publicly" if self.body["public"] else "privately"
        if self.status == "started":
            return f"fedimg started publishing {self.image_name}"
        if self.status == "completed":
            return f"fedimg published {self.image_name} {how} in {len(self.regions)} regions"
        return f"fedimg failed to publish {self.image_name}{self._failed()}"

    def __str__(self) -> str:
        text = f"{self.summary}\n\n" + self._describe(
            "compose_id", "arch", "subvariant", "release", "error"
        )
        for region, ami in sorted(self.regions.items()):
            text += f"\t{region}: {ami}\n"
        return text
