"""The base AMI is copied to every other configured region, concurrently."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.image import (
    RegisteredImage,
    ami_description,
    ami_name,
    find_image,
    wait_image_available,
)
from fedimg.config import Settings
from fedimg.errors import TransientError
from fedimg.identity import TAG_ROLE, ImageIdentity, tag_list

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

# A fresh copy's id can be unknown to CreateTags for a while (eventual consistency).
TAG_VISIBLE_DEADLINE_S = 120.0


def copy_token(identity: ImageIdentity, source_ami: str, region: str) -> str:
    """Deterministic: a retried or re-run CopyImage for the same copy is the same request."""
    return hashlib.sha256(f"{identity.key}/{source_ami}/{region}".encode()).hexdigest()[:64]


def copy_image_if_not_exists(
    settings: Settings,
    clients: Clients,
    identity: ImageIdentity,
    source: RegisteredImage,
    region: str,
) -> RegisteredImage:
    """Copies the base AMI into ``region`` unless a copy is already there.

    Safe to re-run: CopyImage does not enforce unique names, so the copy is looked up (by tag or
    name) first; the ClientToken makes a retried request idempotent; a new copy is tagged by
    CopyImage itself, a found one gets its tags re-applied. Name
    and description are RegisterImage's, within AWS's limits (limits.py): a name AWS would
    refuse is an InputError before any request.
    """
    ec2 = clients.ec2(region)
    name = ami_name(settings, identity, region)  # checked against limits.AMI_NAME_RE
    what = f"copy of {source.ami} to {region}"
    tags = tag_list(
        identity.tags(settings.image.tags)
        | {TAG_ROLE: "copy", "fedimg:source-ami": source.ami, "fedimg:source-region": source.region}
    )
    try:
        ami = find_image(ec2, identity, name)
        reused = ami is not None
        if ami is None:
            ami = ec2.copy_image(
                SourceRegion=source.region,
                SourceImageId=source.ami,
                Name=name,
                Description=ami_description(identity),
                ClientToken=copy_token(identity, source.ami, region),
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
        wait_image_available(ec2, ami, what, settings.aws.wait_seconds)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, what) from e
    return RegisteredImage(ami, region, name, reused)


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
