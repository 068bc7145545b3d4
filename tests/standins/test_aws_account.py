"""The stand-in's account model: dry runs, the IAM model, opt-in regions and the public-AMI quota
(each test names the AWS documentation it follows)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fedimg.standins.aws import options

ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"})
ME = "arn:aws:iam::123456789012:user/moto"


def client(aws: str, service: str, region: str = "us-east-1") -> Any:
    return boto3.client(service, region_name=region, endpoint_url=aws, config=ONE_ATTEMPT)


def answer(call: Any, **params: Any) -> tuple[str, int]:
    """The error code and HTTP status a call answers with."""
    with pytest.raises(ClientError) as e:
        call(**params)
    response = e.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def deny(monkeypatch: pytest.MonkeyPatch, *actions: str) -> None:
    monkeypatch.setenv(options.DENY, ",".join(actions))


def test_an_allowed_dry_run_is_dry_run_operation_412_and_changes_nothing(aws: str) -> None:
    """EC2 API reference, DryRun parameter: "If you have the required permissions, the error
    response is DryRunOperation"; "Common client error codes": HTTP 412."""
    ec2 = client(aws, "ec2")
    assert answer(ec2.create_security_group, GroupName="g", Description="d", DryRun=True) == (
        "DryRunOperation",
        412,
    )
    assert answer(ec2.register_image, Name="never-made", DryRun=True) == ("DryRunOperation", 412)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["g"]}])
    assert groups["SecurityGroups"] == []
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_a_denied_ec2_action_is_unauthorized_operation_403_dry_run_or_not(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DryRun parameter: "Otherwise, it is UnauthorizedOperation"; a real call without the
    permission is UnauthorizedOperation (403) too ("Common client error codes")."""
    deny(monkeypatch, "ec2:RegisterImage")
    ec2 = client(aws, "ec2")
    for dry in (True, False):
        assert answer(ec2.register_image, Name="denied", DryRun=dry) == (
            "UnauthorizedOperation",
            403,
        )
    assert answer(ec2.create_security_group, GroupName="g", Description="d", DryRun=True)[0] == (
        "DryRunOperation"
    )


def test_denied_ebs_and_ssm_actions_are_access_denied(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EBS direct API reference, StartSnapshot errors: AccessDeniedException, HTTP 403; SSM
    "Common errors": AccessDeniedException, HTTP 400. IAM action names are case-insensitive."""
    deny(monkeypatch, "EBS:startsnapshot", "ssm:PutParameter")
    assert answer(client(aws, "ebs").start_snapshot, VolumeSize=1) == (
        "AccessDeniedException",
        403,
    )
    ssm = client(aws, "ssm")
    assert answer(ssm.put_parameter, Name="/p", Value="v", Type="String") == (
        "AccessDeniedException",
        400,
    )
    assert answer(ssm.get_parameter, Name="/p")[0] == "ParameterNotFound"  # not denied


def test_get_caller_identity_is_never_denied(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """API_GetCallerIdentity.html: "No permissions are required to perform this operation"."""
    deny(monkeypatch, "sts:GetCallerIdentity")
    assert client(aws, "sts").get_caller_identity()["Account"] == "123456789012"


def test_simulate_principal_policy_evaluates_the_iam_model(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IAM API_SimulatePrincipalPolicy.html: one EvaluationResult per action, EvalDecision
    allowed or implicitDeny; PolicySourceArn must be a user, group or role (InvalidInput)."""
    deny(monkeypatch, "ebs:PutSnapshotBlock")
    iam = client(aws, "iam")
    results = iam.simulate_principal_policy(
        PolicySourceArn=ME, ActionNames=["ebs:PutSnapshotBlock", "ssm:GetParameter"]
    )["EvaluationResults"]
    decisions = {r["EvalActionName"]: r["EvalDecision"] for r in results}
    assert decisions == {"ebs:PutSnapshotBlock": "implicitDeny", "ssm:GetParameter": "allowed"}
    session = "arn:aws:sts::123456789012:assumed-role/fedimg/s1"
    params = {"PolicySourceArn": session, "ActionNames": ["ec2:RunInstances"]}
    assert answer(iam.simulate_principal_policy, **params) == ("InvalidInput", 400)
    deny(monkeypatch, "iam:SimulatePrincipalPolicy")
    params["PolicySourceArn"] = ME
    assert answer(iam.simulate_principal_policy, **params) == ("AccessDenied", 403)


def test_describe_regions_shows_disabled_regions_only_with_all_regions(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API_DescribeRegions.html, AllRegions: "display all Regions, including Regions that are
    disabled for your account"; OptInStatus opt-in-not-required | opted-in | not-opted-in."""
    monkeypatch.setenv(options.DISABLED_REGIONS, "ap-east-1")
    ec2 = client(aws, "ec2")
    every = {
        r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions(AllRegions=True)["Regions"]
    }
    assert every["ap-east-1"] == "not-opted-in"
    assert every["me-south-1"] == "opted-in"
    assert every["us-east-1"] == "opt-in-not-required"
    assert not any(r.startswith("cn-") for r in every)  # only the request's partition
    enabled = {r["RegionName"] for r in ec2.describe_regions()["Regions"]}
    assert enabled == set(every) - {"ap-east-1"}


def test_ec2_in_a_disabled_region_is_auth_failure(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account Management guide, "Enable or disable Regions": credentials are not valid in an
    opt-in region until it is enabled; EC2 answers AuthFailure (HTTP 401)."""
    monkeypatch.setenv(options.DISABLED_REGIONS, "ap-east-1")
    ec2 = client(aws, "ec2", "ap-east-1")
    assert answer(ec2.describe_images, Owners=["self"]) == ("AuthFailure", 401)
    assert client(aws, "ec2", "eu-west-1").describe_images(Owners=["self"])["Images"] == []


def test_the_public_ami_quota_is_awss_default_unless_set(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Service Quotas API_GetServiceQuota.html for EC2's "Public AMIs" (L-0E3CBAB9), default 5
    per region ("Amazon EC2 endpoints and quotas"); other EC2 quotas stay unknown here."""
    quotas = client(aws, "service-quotas")

    def value() -> float:
        quota = quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-0E3CBAB9")["Quota"]
        assert quota["QuotaName"] == "Public AMIs"
        return float(quota["Value"])

    assert value() == 5.0
    monkeypatch.setenv(options.PUBLIC_AMI_QUOTA, "40")
    assert value() == 40.0
    assert answer(quotas.get_service_quota, ServiceCode="ec2", QuotaCode="L-1216C47A")[0] == (
        "NoSuchResourceException"
    )
