"""AWS's documented limits on what fedimg sends, checked before sending and at config load.

Each rule quotes the API reference it follows (botocore's service models carry the same text), so
that what AWS would refuse mid-run is refused at start-up, naming the configuration key.
Functions return a problem description, or "" when the value is acceptable.
"""

from __future__ import annotations

import datetime as dt
import re

# RegisterImage/CopyImage Name: "3-128 alphanumeric characters, parentheses (()), square brackets
# ([]), spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or
# underscores(_)".
AMI_NAME_RE = re.compile(r"^[a-zA-Z0-9()\[\] ./'@_-]{3,128}$")
AMI_NAME_RULE = "3-128 characters of letters, digits, ( ) [ ] space . / - ' @ _"
# AMI descriptions: up to 255 characters (EC2 User Guide; the stand-in enforces the same).
AMI_DESCRIPTION_MAX = 255

# Tags. At most 50 per resource. Keys and values: the EC2 Tag shape allows keys of 127 and values
# of 256 characters, EBS direct's StartSnapshot Tag 127 and 255; fedimg's tags go through both,
# so the stricter bounds apply. "May not begin with aws:".
TAGS_PER_RESOURCE = 50
TAG_KEY_MAX = 127
TAG_VALUE_MAX = 255
RESERVED_TAG_PREFIX = "aws:"

# EnableImageDeprecation DeprecateAt: "You can't specify a date in the past. The upper limit for
# DeprecateAt is 10 years from now, except for public AMIs, where the upper limit is 2 years from
# the creation date." Whole days that never exceed those (a leap day only makes a year longer).
PUBLIC_DEPRECATION_MAX_DAYS = 730
DEPRECATION_MAX_DAYS = 3650

# SSM PutParameter Name: "a-zA-Z0-9_.-" and "/" for hierarchies, no "aws"/"ssm" prefix
# (case-insensitive), "a maximum depth of fifteen levels", and "the maximum length for a parameter
# name that you specify is 1011 characters", counting the ARN that precedes the name.
SSM_NAME_RE = re.compile(r"^/[a-zA-Z0-9_.\-/]+$")
SSM_MAX_LEVELS = 15
SSM_MAX_LENGTH_WITH_ARN = 1011
SSM_RESERVED_PREFIXES = ("aws", "ssm")
ACCOUNT_ID_LENGTH = 12


def ami_name_problem(name: str) -> str:
    if AMI_NAME_RE.match(name):
        return ""
    return f"AMI name {name!r} ({len(name)} characters): AWS allows {AMI_NAME_RULE}"


def tag_problem(key: str, value: str) -> str:
    if not key:
        return "a tag key must not be empty"
    if key.lower().startswith(RESERVED_TAG_PREFIX):
        return f"tag keys beginning with {RESERVED_TAG_PREFIX} are reserved by AWS"
    if len(key) > TAG_KEY_MAX:
        return f"tag key of {len(key)} characters; AWS allows at most {TAG_KEY_MAX}"
    if len(value) > TAG_VALUE_MAX:
        return f"tag value of {len(value)} characters; AWS allows at most {TAG_VALUE_MAX}"
    return ""


def partition(region: str) -> str:
    """The ARN partition of a region (its length counts towards SSM's name limit)."""
    for prefix, part in (
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
        ("us-iso-", "aws-iso"),
    ):
        if region.startswith(prefix):
            return part
    return "aws"


def ssm_name_problem(name: str, region: str) -> str:
    if not SSM_NAME_RE.match(name) or "//" in name:
        return f"SSM parameter name {name!r}: AWS allows a leading / and a-z A-Z 0-9 _ . - /"
    if name.lstrip("/").lower().startswith(SSM_RESERVED_PREFIXES):
        return f"SSM parameter name {name!r}: names beginning with aws or ssm are reserved"
    levels = len([part for part in name.split("/") if part])
    if levels > SSM_MAX_LEVELS:
        return f"SSM parameter name {name!r}: {levels} levels; AWS allows {SSM_MAX_LEVELS}"
    arn = f"arn:{partition(region)}:ssm:{region}:{'0' * ACCOUNT_ID_LENGTH}:parameter"
    if len(arn) + len(name) > SSM_MAX_LENGTH_WITH_ARN:
        return (
            f"SSM parameter name of {len(name)} characters is too long in {region}: AWS allows "
            f"{SSM_MAX_LENGTH_WITH_ARN} including the {len(arn)} of the ARN before it"
        )
    return ""


def deprecation_time(created: dt.datetime, days: int, *, public: bool) -> dt.datetime:
    """``days`` after the AMI's creation, on a whole minute (AWS rounds seconds to the nearest
    minute; truncating never rounds past the limit), capped at what AWS allows."""
    limit = PUBLIC_DEPRECATION_MAX_DAYS if public else DEPRECATION_MAX_DAYS
    when = created + dt.timedelta(days=min(days, limit))
    return when.replace(second=0, microsecond=0)
