"""The documented EC2 request rules, as small pure checks.

Each check names the page of the Amazon EC2 API Reference (``API_<Action>.html``) and the
parameter it follows, and refuses with the error code AWS answers. Where the reference names no
code, the comment says which code AWS is known to use. The handlers in ``ec2_*.py`` call them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fedimg.standins.aws.errors import refuse

# API_RegisterImage.html, Name: "3-128 alphanumeric characters, parentheses (()), square brackets
# ([]), spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or
# underscores(_)".
AMI_NAME = re.compile(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}")
# CreateImage's Description constraint ("0-255 characters"); the limit of every AMI description.
DESCRIPTION_MAX = 255
TAGS_PER_RESOURCE = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256

# Valid values, from the API reference's enumerations.
ARCHITECTURES = ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
VIRTUALIZATION_TYPES = ("hvm", "paravirtual")
VOLUME_TYPES = ("standard", "io1", "io2", "gp2", "sc1", "st1", "gp3")
V2 = ("v2.0",)
SRIOV = ("simple",)

# TagSpecifications ResourceType each action accepts (its TagSpecifications parameter).
TAGGABLE = {
    "RegisterImage": ("image",),
    "CopyImage": ("image", "snapshot"),
    "RunInstances": ("instance", "volume", "spot-instances-request", "network-interface"),
    "CreateSecurityGroup": ("security-group",),
    "ImportKeyPair": ("key-pair",),
}


def check_ami_name(name: str | None) -> None:
    """API_RegisterImage.html, Name: 3-128 characters of the documented set.

    The reference lists the constraint without a code; AWS answers ``InvalidAMIName.Malformed``.
    """
    if name is None:
        refuse("MissingParameter", "The request must contain the parameter Name")
    if not AMI_NAME.fullmatch(name):
        refuse(
            "InvalidAMIName.Malformed",
            f"AMI name {name!r} is malformed: 3-128 letters, digits and ()[] ./-'@_ only",
        )


def check_ami_name_unique(name: str, live_names: Iterable[str]) -> None:
    """API_RegisterImage.html / API_CreateImage.html, Name: unique among the account's AMIs in the
    region ("InvalidAMIName.Duplicate" in the reference's error code list)."""
    if name in set(live_names):
        refuse("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI")


def check_description(description: str | None) -> None:
    """API_CreateImage.html, Description: "Constraints: 0-255 characters" (also RegisterImage's and
    CopyImage's AMI description); AWS answers ``InvalidParameterValue``."""
    if description is not None and len(description) > DESCRIPTION_MAX:
        refuse(
            "InvalidParameterValue",
            f"Description is {len(description)} characters; at most {DESCRIPTION_MAX}",
        )


def check_choice(parameter: str, value: Any, allowed: Iterable[str]) -> None:
    """The parameter's "Valid Values" in the API reference (``InvalidParameterValue``)."""
    if value is not None and str(value) not in tuple(allowed):
        refuse("InvalidParameterValue", f"Value ({value}) for parameter {parameter} is invalid")


def check_tpm_needs_uefi(tpm_support: str | None, boot_mode: str | None) -> None:
    """API_RegisterImage.html, TpmSupport with BootMode: NitroTPM needs boot mode ``uefi``
    (AWS answers ``InvalidParameterCombination``)."""
    if tpm_support and boot_mode != "uefi":
        refuse(
            "InvalidParameterCombination",
            f"TpmSupport {tpm_support} requires BootMode uefi, not {boot_mode}",
        )


def check_volume_fits_snapshot(device: str, volume_gib: int, snapshot_gib: int) -> None:
    """API_EbsBlockDevice.html, VolumeSize: "the volume size must be equal or larger than the
    snapshot size" (AWS answers ``InvalidBlockDeviceMapping``)."""
    if volume_gib < snapshot_gib:
        refuse(
            "InvalidBlockDeviceMapping",
            f"Volume of size {volume_gib} GiB at {device} is smaller than its snapshot "
            f"({snapshot_gib} GiB)",
        )


def check_tag_specification_types(action: str, specs: list[Mapping[str, Any]]) -> None:
    """API_<action>.html, TagSpecifications: only the documented ResourceType values; for
    RegisterImage "If you specify another value for ResourceType, the request fails"."""
    allowed = TAGGABLE[action]
    for spec in specs:
        kind = spec.get("ResourceType")
        if kind not in allowed:
            refuse(
                "InvalidParameterValue",
                f"'{kind}' is not a valid taggable resource type for this operation "
                f"({action} accepts {', '.join(allowed)})",
            )


def check_tags(tags: Mapping[str, str], existing: Iterable[str] = ()) -> None:
    """API_CreateTags.html and API_Tag.html: at most 50 tags per resource, key 1-128 characters
    not starting with ``aws:``, value at most 256 characters (``InvalidParameterValue``; the count
    ``TagLimitExceeded``)."""
    for key, value in tags.items():
        if not 1 <= len(key) <= TAG_KEY_MAX:
            refuse("InvalidParameterValue", f"Tag key must be 1-{TAG_KEY_MAX} characters: {key!r}")
        if key.lower().startswith("aws:"):
            refuse(
                "InvalidParameterValue",
                f"Tag key {key!r}: keys starting with 'aws:' are reserved for internal use",
            )
        if len(value or "") > TAG_VALUE_MAX:
            refuse("InvalidParameterValue", f"Tag value for {key!r} exceeds {TAG_VALUE_MAX}")
    if len(set(existing) | set(tags)) > TAGS_PER_RESOURCE:
        refuse("TagLimitExceeded", f"A resource can have at most {TAGS_PER_RESOURCE} tags")


def check_metadata_options(options: Mapping[str, Any]) -> None:
    """API_InstanceMetadataOptionsRequest.html: HttpTokens optional|required, HttpEndpoint,
    HttpProtocolIpv6 and InstanceMetadataTags enabled|disabled, HttpPutResponseHopLimit 1-64."""
    check_choice("HttpTokens", options.get("HttpTokens"), ("optional", "required"))
    for toggle in ("HttpEndpoint", "HttpProtocolIpv6", "InstanceMetadataTags"):
        check_choice(toggle, options.get(toggle), ("enabled", "disabled"))
    hops = options.get("HttpPutResponseHopLimit")
    if hops is not None and not 1 <= int(hops) <= 64:
        refuse("InvalidParameterValue", f"HttpPutResponseHopLimit {hops} is not in 1-64")


def deprecation_time(
    requested: dt.datetime, now: dt.datetime, created: dt.datetime, public: bool
) -> dt.datetime:
    """API_EnableImageDeprecation.html, DeprecateAt: seconds rounded to the nearest minute; not
    in the past; at most 10 years from now, and for a public AMI at most 2 years from its
    creation date. The reference names no code; AWS answers ``InvalidParameterValue``."""
    when = (requested + dt.timedelta(seconds=30)).replace(second=0, microsecond=0)
    if when < now:
        refuse("InvalidParameterValue", f"DeprecateAt {when:%Y-%m-%dT%H:%M}Z is in the past")
    if when > years_after(now, 10):
        refuse("InvalidParameterValue", "DeprecateAt is more than 10 years from now")
    if public and when > years_after(created, 2):
        refuse(
            "InvalidParameterValue",
            "DeprecateAt of a public AMI is more than 2 years after its creation date",
        )
    return when


def years_after(start: dt.datetime, years: int) -> dt.datetime:
    """The same instant ``years`` calendar years later (28 February for 29 February)."""
    try:
        return start.replace(year=start.year + years)
    except ValueError:  # 29 February
        return start.replace(year=start.year + years, day=28)


def format_time(when: dt.datetime) -> str:
    """EC2's timestamp text in responses (``DeprecationTime``): ``2026-01-31T12:00:00.000Z``."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
