"""Preflight's AWS checks: identity, regions, permissions, public-AMI quota, block public access
and the boot test's network. Nothing is created: mutating EC2 actions are only dry runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code
from fedimg.aws.publish import check_block_public_access
from fedimg.config import Settings
from fedimg.errors import AwsError
from fedimg.preflight import BLOCKER, GLOBAL, OK, UNCHECKED, WARNING, Row
from fedimg.preflight_dryruns import DRY_RUNS, ON_EXISTING
from fedimg.preflight_network import network_row

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# Preflight must answer within a minute: few attempts and short timeouts, whatever a run uses.
MAX_ATTEMPTS = 2
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
REGION_WORKERS = 8
# Actions without a dry run, asked of IAM's policy simulator for the caller's principal.
SIMULATED = (
    "ebs:StartSnapshot",
    "ebs:PutSnapshotBlock",
    "ebs:CompleteSnapshot",
    "ssm:GetParameter",
    "ssm:PutParameter",
)
# Service Quotas: EC2's "Public AMIs" per region ("Amazon EC2 endpoints and quotas").
PUBLIC_AMIS_QUOTA_CODE = "L-0E3CBAB9"
ENABLED = ("opt-in-not-required", "opted-in")
POLICY = "attach iam-policy.json to the principal fedimg runs as"


def preflight_clients(settings: Settings) -> Clients:
    aws = settings.aws
    return Clients(
        dataclasses.replace(
            aws,
            max_attempts=min(aws.max_attempts, MAX_ATTEMPTS),
            connect_timeout=min(aws.connect_timeout, CONNECT_TIMEOUT_S),
            read_timeout=min(aws.read_timeout, READ_TIMEOUT_S),
        )
    )


def aws_rows(settings: Settings, clients: Clients | None = None) -> list[Row]:
    """Every AWS check; without valid credentials only the identity row."""
    clients = clients or preflight_clients(settings)
    base = settings.aws.base_region
    regions = list(dict.fromkeys((base, *settings.aws.regions)))
    identity, arn = identity_row(clients, base)
    if arn is None:
        return [identity]
    partition = arn.split(":")[1]
    region_rows = enabled_region_rows(clients, base, regions, partition)
    enabled = [r.region for r in region_rows if r.status == OK]
    with ThreadPoolExecutor(max_workers=min(REGION_WORKERS, max(1, len(enabled)))) as pool:
        per_region = list(pool.map(lambda r: region_checks(settings, clients, r), enabled))
    rows = [identity, simulated_row(clients, base, arn), *region_rows]
    rows += [row for found in per_region for row in found]
    if settings.test.enabled and base in enabled:
        rows.append(network_row(settings, clients.ec2(base), base))
    return rows


def _what(err: BaseException) -> str:
    """An AWS error in a few words (code and message, never the request)."""
    if isinstance(err, ClientError):
        message = err.response.get("Error", {}).get("Message", "")
        return f"{error_code(err)}: {message}"[:200]
    return str(err)[:200]


def identity_row(clients: Clients, region: str) -> tuple[Row, str | None]:
    """STS GetCallerIdentity (needs no permission): whether the credentials work, and whose."""
    sts = clients._client("sts", region)  # the one client factory; no typed accessor for STS
    try:
        me = sts.get_caller_identity()
    except (ClientError, BotoCoreError) as e:
        action = "give AWS credentials: environment, profile (AWS_PROFILE) or instance role"
        return Row(
            "credentials", GLOBAL, BLOCKER, f"no usable credentials: {_what(e)}", action
        ), None
    arn = str(me["Arn"])
    partition = arn.split(":")[1]
    detail = f"account {me['Account']} as {arn} (partition {partition})"
    return Row("credentials", GLOBAL, OK, detail), arn


def enabled_region_rows(
    clients: Clients, base: str, regions: list[str], partition: str
) -> list[Row]:
    """EC2 DescribeRegions with AllRegions: each configured region enabled for the account."""
    try:
        answer = clients.ec2(base).describe_regions(AllRegions=True)["Regions"]
    except (ClientError, BotoCoreError) as e:
        detail = f"DescribeRegions failed: {_what(e)}"
        return [Row("region enabled", r, UNCHECKED, detail, POLICY) for r in regions]
    status = {r["RegionName"]: r.get("OptInStatus", "") for r in answer}
    rows, endpoints = [], boto3.session.Session()
    for region in regions:
        home = endpoints.get_partition_for_region(region)
        if home != partition:
            detail = f"{region} is in partition {home}; the credentials are for {partition}"
            rows.append(
                Row("region enabled", region, BLOCKER, detail, "remove it from aws.regions")
            )
        elif region not in status:
            detail = "not a region of this account"
            rows.append(Row("region enabled", region, BLOCKER, detail, "fix aws.regions"))
        elif status[region] not in ENABLED:
            rows.append(
                Row(
                    "region enabled",
                    region,
                    BLOCKER,
                    f"opt-in region, {status[region]}",
                    f"enable it: aws account enable-region --region-name {region}, "
                    "or remove it from aws.regions",
                )
            )
        else:
            rows.append(Row("region enabled", region, OK, status[region]))
    return rows


def region_checks(settings: Settings, clients: Clients, region: str) -> list[Row]:
    ec2 = clients.ec2(region)
    rows = [permission_row(ec2, region)]
    if settings.publish.public:
        rows.append(public_quota_row(clients, ec2, region, settings))
    if settings.publish.public or settings.publish.public_snapshots:
        rows.append(block_public_access_row(settings, ec2, region))
    return rows


def permission_row(ec2: EC2Client, region: str) -> Row:
    """Every EC2 action fedimg calls, as a dry run: DryRunOperation = allowed,
    UnauthorizedOperation = denied, except for the dry runs on placeholder resources
    (ON_EXISTING), which the policy allows only on resources tagged fedimg:managed. Any other
    answer (a placeholder id looked up before the permission) leaves that action unchecked."""
    denied: list[str] = []
    needs_tag: list[str] = []  # under the policy: allowed on fedimg's own resources only
    unchecked: list[str] = []
    for action, call in DRY_RUNS.items():
        outcome = dry_run(ec2, region, call)
        if outcome == "UnauthorizedOperation":
            (needs_tag if action in ON_EXISTING else denied).append(f"ec2:{action}")
        elif outcome != "DryRunOperation":
            unchecked.append(f"ec2:{action} ({outcome})")
    if denied:
        detail = f"denied: {', '.join(denied)}"
        return Row("EC2 permissions", region, BLOCKER, detail, f"allow them: {POLICY}")
    if unchecked or needs_tag:
        parts = (
            [f"needs fedimg:managed on the resource: {', '.join(needs_tag)}"] if needs_tag else []
        )
        parts += [f"dry run inconclusive for {', '.join(unchecked)}"] if unchecked else []
        detail = "; ".join(parts)
        return Row("EC2 permissions", region, UNCHECKED, detail, "compare with iam-policy.json")
    return Row("EC2 permissions", region, OK, f"{len(DRY_RUNS)} actions allowed (dry runs)")


def dry_run(ec2: EC2Client, region: str, call: Callable[[EC2Client, str], object]) -> str:
    """The error code a dry run answers ("" when it answered as if it had run)."""
    try:
        call(ec2, region)
    except ClientError as e:
        return error_code(e) or "no error code"
    except BotoCoreError as e:
        return type(e).__name__
    return "no DryRunOperation"


def simulated_row(clients: Clients, region: str, arn: str) -> Row:
    """EBS direct and SSM have no dry run: IAM's policy simulator for the caller's principal."""
    check = "EBS direct and SSM permissions"
    principal = principal_arn(arn)
    if principal is None:
        detail = f"{arn} cannot be simulated (not an IAM user or role)"
        return Row(check, GLOBAL, UNCHECKED, detail, f"make sure of {', '.join(SIMULATED)}")
    iam = clients._client("iam", region)  # global service; the region only picks the partition
    try:
        answer = iam.simulate_principal_policy(
            PolicySourceArn=principal, ActionNames=list(SIMULATED)
        )
    except (ClientError, BotoCoreError) as e:
        detail = f"iam:SimulatePrincipalPolicy not possible ({_what(e)[:80]})"
        action = f"allow iam:SimulatePrincipalPolicy, or make sure of {', '.join(SIMULATED)}"
        return Row(check, GLOBAL, UNCHECKED, detail, action)
    denied = sorted(
        {r["EvalActionName"] for r in answer["EvaluationResults"] if r["EvalDecision"] != "allowed"}
    )
    if denied:
        detail = f"denied (policy simulator): {', '.join(denied)}"
        return Row(check, GLOBAL, BLOCKER, detail, f"allow them: {POLICY}")
    return Row(check, GLOBAL, OK, f"{len(SIMULATED)} actions allowed (policy simulator)")


def principal_arn(arn: str) -> str | None:
    """The IAM user or role behind a caller ARN (an assumed role's session -> its role; a role
    with a path cannot be told from the session ARN, and the simulation then fails: unchecked)."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return None
    partition, account, resource = parts[1], parts[4], parts[5]
    if resource.startswith("assumed-role/"):
        return f"arn:{partition}:iam::{account}:role/{resource.split('/')[1]}"
    if resource.startswith("user/"):
        return f"arn:{partition}:iam::{account}:{resource}"
    return None


def public_quota_row(clients: Clients, ec2: EC2Client, region: str, settings: Settings) -> Row:
    """Public AMIs in the region against the "Public AMIs" quota; a compose makes one per
    image (architecture x subvariant)."""
    check = "public AMI quota"
    try:
        pages = ec2.get_paginator("describe_images").paginate(
            Owners=["self"], Filters=[{"Name": "is-public", "Values": ["true"]}]
        )
        public = sum(len(page["Images"]) for page in pages)
    except (ClientError, BotoCoreError) as e:
        return Row(check, region, UNCHECKED, f"DescribeImages failed: {_what(e)}", POLICY)
    quotas = clients._client("service-quotas", region)
    try:
        answer = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=PUBLIC_AMIS_QUOTA_CODE)
        quota = int(answer["Quota"]["Value"])
    except (ClientError, BotoCoreError) as e:
        detail = f"{public} public AMIs; quota unknown ({_what(e)[:80]})"
        return Row(check, region, UNCHECKED, detail, "allow servicequotas:GetServiceQuota")
    per_compose = len(settings.compose.arches) * len(settings.compose.subvariants)
    detail = f"{public} of {quota} public AMIs used"
    raise_it = (
        "request more: aws service-quotas request-service-quota-increase --service-code ec2 "
        f"--quota-code {PUBLIC_AMIS_QUOTA_CODE} --region {region} --desired-value N, "
        "or deregister old public AMIs"
    )
    if public >= quota:
        return Row(check, region, BLOCKER, detail + ": none left", raise_it)
    if quota - public < per_compose:
        return Row(check, region, WARNING, detail + f"; a compose needs {per_compose}", raise_it)
    return Row(check, region, OK, detail)


def block_public_access_row(settings: Settings, ec2: EC2Client, region: str) -> Row:
    """The account's block public access for AMIs (and snapshots, if they are published)."""
    check = "block public access"
    p = settings.publish
    try:
        check_block_public_access(ec2, region, images=p.public, snapshots=p.public_snapshots)
    except AwsError as e:
        return Row(check, region, BLOCKER, str(e), "see detail")
    except (ClientError, BotoCoreError) as e:
        return Row(check, region, UNCHECKED, _what(e), POLICY)
    kinds = " and snapshots" if p.public_snapshots else ""
    return Row(check, region, OK, f"AMIs{kinds} can be made public")
