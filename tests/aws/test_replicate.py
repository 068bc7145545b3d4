"""CopyImage to another region, against the strict AWS stand-in over HTTP."""

from __future__ import annotations

import dataclasses

import boto3
import pytest

from fedimg.aws.clients import Clients
from fedimg.aws.image import RegisteredImage
from fedimg.aws.limits import AMI_DESCRIPTION_MAX
from fedimg.aws.replicate import copy_image_if_not_exists
from fedimg.config import Settings
from fedimg.errors import InputError
from fedimg.identity import ImageIdentity
from tests.helpers import ec2, record

# Within AWS's longest tag value (the image name is one); "Fedora image " + it: 269 characters.
LONG = ImageIdentity("F" * 249 + ".x86_64", "x86_64", "ab" * 32)


def base_ami(url: str) -> RegisteredImage:
    ami = ec2(url).register_image(Name="base", RootDeviceName="/dev/sda1")["ImageId"]
    return RegisteredImage(ami, "us-east-1", "base", False)


def naming(settings: Settings, template: str) -> Settings:
    image = dataclasses.replace(settings.image, name_template=template)
    return dataclasses.replace(settings, image=image)


def test_the_copys_description_keeps_within_aws_limit(settings: Settings, aws: str) -> None:
    """The stand-in refuses a description over 255 characters, as AWS does."""
    s = naming(settings, "fedora-{arch}-{region}")
    session = boto3.session.Session()
    rec = record(session)
    copy = copy_image_if_not_exists(
        s, Clients(s.aws, session=session), LONG, base_ami(aws), "us-west-2"
    )
    (request,) = rec.of("CopyImage")
    assert len(request["Description"]) == AMI_DESCRIPTION_MAX
    (held,) = ec2(aws, "us-west-2").describe_images(ImageIds=[copy.ami])["Images"]
    assert held["Description"] == request["Description"]
    assert held["Name"] == "fedora-x86_64-us-west-2"


def test_a_copy_name_aws_would_refuse_fails_before_any_copy(settings: Settings, aws: str) -> None:
    s = naming(settings, "{image_name}+{region}")  # "+" is not allowed in AMI names
    session = boto3.session.Session()
    rec = record(session)
    identity = ImageIdentity("Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64", "x86_64", "ab" * 32)
    with pytest.raises(InputError, match=r"AMI name .*\+us-west-2"):
        copy_image_if_not_exists(
            s, Clients(s.aws, session=session), identity, base_ami(aws), "us-west-2"
        )
    assert rec.count("CopyImage") == 0
