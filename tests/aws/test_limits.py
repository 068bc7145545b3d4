"""AWS's documented limits as fedimg checks them (the config and stage tests use them too)."""

from __future__ import annotations

import datetime as dt

from fedimg.aws import limits


def test_ssm_name_length_counts_the_regions_arn() -> None:
    """1011 characters including the ARN before the name: longer in GovCloud than in us-east-1."""
    arn_commercial = len("arn:aws:ssm:us-east-1:123456789012:parameter")
    name = "/" + "x" * (limits.SSM_MAX_LENGTH_WITH_ARN - arn_commercial - 1)
    assert limits.ssm_name_problem(name, "us-east-1") == ""
    assert "too long in us-gov-west-1" in limits.ssm_name_problem(name, "us-gov-west-1")


def test_ssm_names_reserved_and_malformed() -> None:
    assert limits.ssm_name_problem("/fedimg/41/Cloud_Base/x86_64/latest", "us-east-1") == ""
    assert "reserved" in limits.ssm_name_problem("/AWS/service/x", "us-east-1")
    assert "allows" in limits.ssm_name_problem("/fedimg//latest", "us-east-1")
    assert limits.ssm_name_problem("/a" * 15, "us-east-1") == ""


def test_deprecation_is_whole_minutes_and_capped_for_public_amis() -> None:
    created = dt.datetime(2025, 3, 1, 12, 0, 59, 900000, tzinfo=dt.UTC)
    public = limits.deprecation_time(created, 10_000, public=True)
    assert public == dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)  # 730 days, never past 2 years
    shared = limits.deprecation_time(created, 10_000, public=False)
    assert shared - created < dt.timedelta(days=3650)
    assert shared.second == 0 and shared.microsecond == 0


def test_ami_names_as_documented() -> None:
    assert limits.ami_name_problem("Fedora [41] 'Cloud' @ us-east-1 (gp3)/x_y.z-0") == ""
    assert limits.ami_name_problem("ab")
    assert limits.ami_name_problem("x" * 129)
    assert limits.ami_name_problem("Fedora#41")
