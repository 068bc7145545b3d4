"""iam-policy.json judged by an IAM policy evaluator (``@cloud-copilot/iam-simulate``, which knows
each action's resource types and condition keys from AWS's Service Authorization Reference):
fedimg's own resources are allowed, anyone else's denied, and reads go unconditioned only where
AWS cannot limit them. test_security.py evaluates every call of a full run the same way."""

from __future__ import annotations

from typing import Any

import pytest

from tests.iam.evaluator import evaluate, policy
from tests.iam.requests import ACCOUNT

REGION = "us-east-1"
AMI = f"arn:aws:ec2:{REGION}::image/ami-0123456789abcdef0"
SNAPSHOT = f"arn:aws:ec2:{REGION}::snapshot/snap-0123456789abcdef0"
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0"
MANAGED = {"aws:ResourceTag/fedimg:managed": "true", "ec2:ResourceTag/fedimg:managed": "true"}
FOREIGN = {"aws:ResourceTag/team": "web", "ec2:ResourceTag/team": "web"}
ASKED = {"aws:RequestTag/fedimg:managed": "true", "aws:TagKeys": ["fedimg:managed"]}
# The tags fedimg gives the snapshot an import task made (ImportSnapshot can tag only the task).
IMPORTED = {
    "aws:RequestTag/fedimg:managed": "true",
    "aws:RequestTag/fedimg:import-task": "import-snap-0123456789abcdef0",
    "aws:TagKeys": ["fedimg:import-task", "fedimg:managed"],
}
UNMANAGED = {"aws:ResourceTag/fedimg:managed": "false", "ec2:ResourceTag/fedimg:managed": "false"}
IMPORT_TASK = f"arn:aws:ec2:{REGION}:{ACCOUNT}:import-snapshot-task/import-snap-0123456789abcdef0"
PARAMETERS = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"


def request(action: str, resource: str, **context: Any) -> dict[str, Any]:
    return {"action": action, "resource": resource, "context": context}


# (what, the request on fedimg's resource, the same request on someone else's)
PAIRS = [
    (
        "DeregisterImage of an AMI without fedimg:managed",
        request("ec2:DeregisterImage", AMI, **MANAGED),
        request("ec2:DeregisterImage", AMI),
    ),
    (
        "ModifyImageAttribute (make public) on a foreign AMI",
        request("ec2:ModifyImageAttribute", AMI, **MANAGED),
        request("ec2:ModifyImageAttribute", AMI, **FOREIGN),
    ),
    (
        "DeleteSnapshot of an untagged snapshot",
        request("ec2:DeleteSnapshot", SNAPSHOT, **MANAGED),
        request("ec2:DeleteSnapshot", SNAPSHOT),
    ),
    (
        "PutSnapshotBlock into a foreign snapshot",
        request("ebs:PutSnapshotBlock", SNAPSHOT, **MANAGED),
        request("ebs:PutSnapshotBlock", SNAPSHOT, **FOREIGN),
    ),
    (
        "TerminateInstances of a foreign instance",
        request("ec2:TerminateInstances", INSTANCE, **MANAGED),
        request("ec2:TerminateInstances", INSTANCE, **FOREIGN),
    ),
    (
        "RunInstances of a foreign AMI, even with fedimg's tags in the request",
        request("ec2:RunInstances", AMI, **MANAGED, **ASKED),
        request("ec2:RunInstances", AMI, **FOREIGN, **ASKED),
    ),
    (
        "RegisterImage from a foreign snapshot, even with fedimg's tags in the request",
        request("ec2:RegisterImage", SNAPSHOT, **MANAGED, **ASKED),
        request("ec2:RegisterImage", SNAPSHOT, **ASKED),
    ),
    (
        "CreateTags adopting a foreign AMI (adding fedimg:managed to it)",
        request("ec2:CreateTags", AMI, **MANAGED, **ASKED),
        request("ec2:CreateTags", AMI, **FOREIGN, **ASKED),
    ),
    (
        "StartSnapshot without fedimg:managed in its tags",
        request("ebs:StartSnapshot", SNAPSHOT, **ASKED),
        request("ebs:StartSnapshot", SNAPSHOT, **{"aws:RequestTag/team": "web"}),
    ),
    (
        "tag-on-create CreateTags outside a creating call fedimg makes",
        request("ec2:CreateTags", AMI, **ASKED, **{"ec2:CreateAction": "RegisterImage"}),
        request("ec2:CreateTags", AMI, **ASKED, **{"ec2:CreateAction": "CreateImage"}),
    ),
    (
        "PutParameter outside the /fedimg prefix",
        request("ssm:PutParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/fedimg/42/x"),
        request("ssm:PutParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/db/password"),
    ),
    (
        "DeleteParameters outside the outcome records",
        request("ssm:DeleteParameters", f"{PARAMETERS}/fedimg-outcomes/Fedora-42-20250101.0/k"),
        request("ssm:DeleteParameters", f"{PARAMETERS}/fedimg/42/Cloud_Base/x86_64/latest"),
    ),
    (
        "CreateTags on an untagged snapshot other than as the import's (fedimg:import-task)",
        request("ec2:CreateTags", SNAPSHOT, **IMPORTED),
        request("ec2:CreateTags", SNAPSHOT, **ASKED),
    ),
    (
        "CreateTags retagging a snapshot that has fedimg:managed=false, as if imported",
        request("ec2:CreateTags", SNAPSHOT, **IMPORTED),
        request("ec2:CreateTags", SNAPSHOT, **IMPORTED, **UNMANAGED),
    ),
    (
        "ImportSnapshot without fedimg:managed in its tags",
        request("ec2:ImportSnapshot", IMPORT_TASK, **ASKED),
        request("ec2:ImportSnapshot", IMPORT_TASK),
    ),
    (
        "CancelImportTask of someone else's import",
        request("ec2:CancelImportTask", IMPORT_TASK, **MANAGED),
        request("ec2:CancelImportTask", IMPORT_TASK, **FOREIGN),
    ),
    (
        "S3 writes outside the staging prefix",
        request("s3:PutObject", "arn:aws:s3:::fedimg-staging/fedimg/x.raw"),
        request("s3:PutObject", "arn:aws:s3:::fedimg-staging/other/x.raw"),
    ),
    (
        "listing the staging bucket outside the prefix",
        request("s3:ListBucket", "arn:aws:s3:::fedimg-staging", **{"s3:prefix": "fedimg/"}),
        request("s3:ListBucket", "arn:aws:s3:::fedimg-staging", **{"s3:prefix": ""}),
    ),
]


@pytest.fixture(scope="module")
def verdicts() -> list[str]:
    """Both sides of every pair, in one evaluator run."""
    return evaluate([r for _, mine, theirs in PAIRS for r in (mine, theirs)])


@pytest.mark.parametrize("index", range(len(PAIRS)), ids=[what for what, _, _ in PAIRS])
def test_fedimgs_resource_is_allowed_and_anyone_elses_denied(
    verdicts: list[str], index: int
) -> None:
    assert verdicts[2 * index : 2 * index + 2] == ["Allowed", "ImplicitlyDenied"]


def test_unconditioned_reads_are_those_aws_cannot_limit_to_a_resource() -> None:
    """Every action granted on "*" is one the evaluator refuses to judge on a specific resource
    ("must.use.wildcard": the reference lists no resource type for it)."""
    everywhere = [a for s in policy()["Statement"] if s["Resource"] == "*" for a in s["Action"]]
    assert everywhere and all(a.split(":")[1].startswith(("Describe", "Get")) for a in everywhere)
    answers = evaluate([request(a, INSTANCE) for a in everywhere])
    assert set(answers) == {'Error: {"message":"must.use.wildcard"}'}
