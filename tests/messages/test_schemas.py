"""The fedimg-messages schemas: examples pass, broken bodies fail, entry points resolve."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from fedimg_messages import (
    ComposeCompleteV1,
    ImageCopyV1,
    ImagePublishV1,
    ImageTestV1,
    ImageUploadV1,
)
from fedora_messaging import message

AMI = "ami-0123456789abcdef0"
AMI2 = "ami-0fedcba9876543210"
IMAGE: dict[str, Any] = {
    "image_name": "Fedora-Cloud-Base-AmazonEC2-43-20251101.0.x86_64",
    "image_url": "https://kojipkgs.example/compose/Fedora-Cloud-Base-AmazonEC2-43.raw.xz",
    "compose_id": "Fedora-Cloud-43-20251101.0",
    "compose": "Fedora-Cloud-43-20251101.0",
    "arch": "x86_64",
    "subvariant": "Cloud_Base",
    "release": "43",
    "service": "EC2",
    "status": "completed",
    "extra": {"virt_type": "hvm", "vol_type": "gp3", "id": AMI},
}
REGIONAL = {**IMAGE, "region": "us-east-1", "destination": "us-east-1"}

EXAMPLES: dict[type[message.Message], dict[str, Any]] = {
    ImageUploadV1: {**REGIONAL, "ami": AMI, "snapshot": "snap-0123456789abcdef0"},
    ImageTestV1: {
        **REGIONAL,
        "ami": AMI,
        "kind": "ec2",
        "firmware": "uefi",
        "outcome": "PASSED",
        "checks": [{"name": "selinux-enforcing", "outcome": "PASSED", "output": "Enforcing"}],
    },
    ImageCopyV1: {
        **IMAGE,
        "region": "eu-west-1",
        "destination": "eu-west-1",
        "ami": AMI2,
        "source_ami": AMI,
        "source_region": "us-east-1",
        "extra": {"virt_type": "hvm", "id": AMI2, "source_image_id": AMI},
    },
    ImagePublishV1: {**IMAGE, "regions": {"us-east-1": AMI, "eu-west-1": AMI2}, "public": True},
    ComposeCompleteV1: {
        "compose_id": "Fedora-Cloud-43-20251101.0",
        "release": "43",
        "images": [
            {
                "image_name": "Fedora-Cloud-Base-AmazonEC2-43-20251101.0.x86_64",
                "arch": "x86_64",
                "subvariant": "Cloud_Base",
                "outcome": "published",
                "regions": {"us-east-1": AMI},
            },
            {
                "image_name": "Fedora-Cloud-Base-AmazonEC2-43-20251101.0.aarch64",
                "arch": "aarch64",
                "subvariant": "Cloud_Base",
                "outcome": "test-failed",
                "regions": {},
                "error": "check selinux-enforcing: Permissive",
            },
        ],
    },
}
NAMES = {
    ImageUploadV1: "fedimg.image.upload.v1",
    ImageTestV1: "fedimg.image.test.v1",
    ImageCopyV1: "fedimg.image.copy.v1",
    ImagePublishV1: "fedimg.image.publish.v1",
    ComposeCompleteV1: "fedimg.compose.complete.v1",
}
CLASSES = list(EXAMPLES)


def example(cls: type[message.Message], **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLES[cls])
    body.update(changes)
    return body


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_examples_are_valid(cls: type[message.Message]) -> None:
    msg = cls(body=example(cls))
    msg.validate()
    jsonschema.Draft7Validator.check_schema(cls.body_schema)
    assert msg.app_name == "fedimg"
    assert msg.summary and msg.summary in str(msg)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_entry_points_resolve(cls: type[message.Message]) -> None:
    assert message.get_class(NAMES[cls]) is cls
    assert message.get_name(cls) == NAMES[cls]
    assert cls.topic == NAMES[cls].removesuffix(".v1")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_dumps_loads_keeps_the_class(cls: type[message.Message]) -> None:
    sent = cls(body=example(cls))
    [received] = message.loads(message.dumps(sent))
    assert type(received) is cls
    assert received.body == sent.body


def _without(cls: type[message.Message], key: str) -> dict[str, Any]:
    body = example(cls)
    del body[key]
    return body


INVALID = [
    ("no image_name", ImageUploadV1, _without(ImageUploadV1, "image_name")),
    ("empty image_name", ImageUploadV1, example(ImageUploadV1, image_name="")),
    ("unknown status", ImageUploadV1, example(ImageUploadV1, status="done")),
    ("completed without ami", ImageUploadV1, _without(ImageUploadV1, "ami")),
    ("bad ami", ImageUploadV1, example(ImageUploadV1, ami="ami-XYZ")),
    ("bad snapshot", ImageUploadV1, example(ImageUploadV1, snapshot="vol-0123456789")),
    ("bad region", ImageUploadV1, example(ImageUploadV1, region="moon")),
    ("service not EC2", ImageUploadV1, example(ImageUploadV1, service="GCE")),
    ("release not a string", ImageUploadV1, example(ImageUploadV1, release=43)),
    ("extra id not an ami", ImageUploadV1, example(ImageUploadV1, extra={"id": "x"})),
    ("test completed without outcome", ImageTestV1, _without(ImageTestV1, "outcome")),
    ("unknown outcome", ImageTestV1, example(ImageTestV1, outcome="OK")),
    ("unknown kind", ImageTestV1, example(ImageTestV1, kind="vm")),
    ("unknown firmware", ImageTestV1, example(ImageTestV1, firmware="coreboot")),
    (
        "check without output",
        ImageTestV1,
        example(ImageTestV1, checks=[{"name": "true", "outcome": "PASSED"}]),
    ),
    ("copy without source_ami", ImageCopyV1, _without(ImageCopyV1, "source_ami")),
    ("copy completed without ami", ImageCopyV1, _without(ImageCopyV1, "ami")),
    ("regions with a bad ami", ImagePublishV1, example(ImagePublishV1, regions={"us-east-1": "x"})),
    ("regions with a bad region", ImagePublishV1, example(ImagePublishV1, regions={"x": AMI})),
    ("public not a boolean", ImagePublishV1, example(ImagePublishV1, public="yes")),
    ("no compose_id", ComposeCompleteV1, _without(ComposeCompleteV1, "compose_id")),
    (
        "unknown image outcome",
        ComposeCompleteV1,
        example(
            ComposeCompleteV1,
            images=[{**EXAMPLES[ComposeCompleteV1]["images"][0], "outcome": "ok"}],
        ),
    ),
    ("images not a list", ComposeCompleteV1, example(ComposeCompleteV1, images={})),
]


@pytest.mark.parametrize(("cls", "body"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_bodies_are_rejected(cls: type[message.Message], body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        cls(body=body).validate()


def test_started_and_failed_need_no_ids() -> None:
    body = example(ImageUploadV1, status="started", extra={"virt_type": "hvm"})
    del body["ami"], body["snapshot"]
    ImageUploadV1(body=body).validate()
    ImageUploadV1(body={**body, "status": "failed", "error": "throttled"}).validate()
    ImageTestV1(body={**_without(ImageTestV1, "outcome"), "status": "started"}).validate()


def test_unknown_fields_are_allowed_for_compatible_growth() -> None:
    ImageUploadV1(body=example(ImageUploadV1, boot_mode="uefi")).validate()


def test_summaries_say_what_happened() -> None:
    upload = ImageUploadV1(body=example(ImageUploadV1))
    assert upload.summary == (f"fedimg uploaded {IMAGE['image_name']} to us-east-1 as {AMI}")
    assert upload.url is not None and AMI in upload.url
    failed = ImageUploadV1(body=example(ImageUploadV1, status="failed", error="quota"))
    assert failed.summary.endswith("to us-east-1: quota")
    test = ImageTestV1(body=example(ImageTestV1))
    assert test.summary.endswith("(ec2 in us-east-1): PASSED")
    assert "check selinux-enforcing: PASSED" in str(test)
    publish = ImagePublishV1(body=example(ImagePublishV1))
    assert publish.summary.endswith("publicly in 2 regions")
    assert f"eu-west-1: {AMI2}" in str(publish)
    compose = ComposeCompleteV1(body=example(ComposeCompleteV1))
    assert compose.summary == (
        "fedimg finished compose Fedora-Cloud-43-20251101.0: 1 of 2 images published"
    )
    assert "test-failed: check selinux-enforcing: Permissive" in str(compose)
