"""Security: no shell, no credentials in logs or messages, no public AMI before its test passed,
and an IAM policy that lists exactly the AWS actions fedimg uses and allows each call of a full
run only on the resources fedimg made (judged by an IAM policy evaluator, tests/iam/)."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest

from fedimg.aws.boottest import Ec2BootTester, SshTarget
from fedimg.aws.clients import Clients
from fedimg.aws.gc import gc_command
from fedimg.aws.prune import prune_command
from fedimg.aws.s3stage import META_KEY, object_key
from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import SAMPLE_CHECKS, sample_image
from fedimg.boot.ssh import throwaway_key
from fedimg.completion import record_outcome, recorded_outcomes
from fedimg.config import Check, RetentionSettings, Settings
from fedimg.demo import region_table
from fedimg.errors import ChecksumMismatch
from fedimg.identity import ImageIdentity
from fedimg.pipeline import Pipeline
from fedimg.preflight_aws import aws_rows
from fedimg.source import sha256_file
from fedimg.standins.aws import options
from fedimg.standins.aws.ec2_import import VMIMPORT_TRUST
from fedimg.upload import upload_image
from tests.helpers import ec2, record, served_compose
from tests.iam.evaluator import evaluate
from tests.iam.requests import AccessRecorder, iam_requests, is_account_resource
from tests.services import collect_messages, fedora_messaging_config

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ("us-east-1", "eu-west-1")
ACCESS_KEY = "AKIAFEDIMGTEST123456"
SECRET_KEY = "fedimg/Test+Secret/" + "k3y" * 8


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with served_compose(tmp_path_factory.mktemp("sec"), 12, 0.5) as served:
        yield served


def test_no_shell_anywhere() -> None:
    """No subprocess with shell=True and no os.system/os.popen in any Python file of the repo."""
    offenders = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            shell = [k for k in node.keywords if k.arg == "shell"]
            if shell and not (
                isinstance(shell[0].value, ast.Constant) and shell[0].value.value is False
            ):
                offenders.append(f"{path}:{node.lineno} shell=")
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and (f.value.id, f.attr) in (("os", "system"), ("os", "popen"))
            ):
                offenders.append(f"{path}:{node.lineno} os.{f.attr}")
    assert offenders == []


def test_a_full_run_never_shows_the_credentials(
    compose: tuple[str, Path], aws: str, amqp_url: str, tmp_path: Path
) -> None:
    """`fedimg -vv compose` (botocore debug logging on) publishing to a real broker, with unique
    credentials: they appear in no log line and no message."""
    location, _ = compose
    exchange = f"fedimg-sec-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = {json.dumps(list(REGIONS))}\nmax_attempts = 2\n'
        "[test]\nenabled = false\n[publish]\ndeprecate_after_days = 0\n"
    )
    conf = fedora_messaging_config(
        amqp_url,
        tmp_path,
        f"{exchange}-q",
        ["none"],
        exchange=exchange,
        topic_prefix="org.fedoraproject.prod",
    )
    env = os.environ | {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "FEDIMG_CONFIG": str(cfg),
        "FEDORA_MESSAGING_CONF": str(conf),
    }
    with collect_messages(amqp_url, ["#"], exchange=exchange) as inbox:
        r = subprocess.run(
            [sys.executable, "-m", "fedimg.cli", "-vv", "compose", location, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        # per image: upload started+completed, a copy, publish, uploader's; then the summary
        messages = inbox.wait(2 * 5 + 1, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    logs = r.stdout + r.stderr
    assert "Authorization" in logs and "Credential=****" in logs  # botocore debug was on
    bodies = json.dumps([m.body for m in messages])
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in logs
        assert secret not in bodies


@pytest.fixture(scope="module")
def guest(build_dir: Path) -> Iterator[Guest]:
    with running_guest(sample_image(build_dir), "bios", "root") as g:
        yield g


# "No permissions are required to perform this operation" (STS API reference).
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}
MANAGED = "fedimg:managed"


def iam_actions() -> set[str]:
    policy = json.loads((ROOT / "iam-policy.json").read_text())
    return {a for s in policy["Statement"] for a in s["Action"]}


def without_managed_tag(request: dict[str, Any]) -> dict[str, Any] | None:
    """``request`` on a resource that is not fedimg's (no fedimg:managed, as a resource tag or
    in the request's tags); None when the request does not depend on that tag."""
    if is_account_resource(request["resource"]):
        return None  # the default VPC's network is not fedimg's and carries no fedimg tags
    context = request["context"]
    dropped = {
        k: v for k, v in context.items() if not k.endswith(f"Tag/{MANAGED}") and k != "aws:TagKeys"
    }
    if len(dropped) == len(context):
        return None
    return request | {"context": dropped}


def import_settings(s: Settings) -> Settings:
    """The S3 + ImportSnapshot method on the bucket and prefix iam-policy.json names."""
    policy = json.loads((ROOT / "iam-policy.json").read_text())
    s3 = [r for st in policy["Statement"] for r in [st["Resource"]] if "s3:::" in str(r)]
    bucket, prefix = "fedimg-staging", "fedimg/"
    assert f"arn:aws:s3:::{bucket}/{prefix}*" in s3 and f"arn:aws:s3:::{bucket}" in s3
    upload = dataclasses.replace(s.upload, method="import-snapshot", bucket=bucket, prefix=prefix)
    return dataclasses.replace(s, upload=upload)


def import_leftovers(aws: str, s: Settings, identity: ImageIdentity) -> None:
    """The bucket and role an operator provides; an interrupted multipart upload of the image
    (the run continues it: ListParts); a killed run's task still active, its staged object and
    a multipart upload nobody came back for (gc removes them). Made by clients not recorded."""
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws)
    s3.create_bucket(Bucket=s.upload.bucket)
    boto3.client("iam", region_name="us-east-1", endpoint_url=aws).create_role(
        RoleName=s.upload.role, AssumeRolePolicyDocument=json.dumps(VMIMPORT_TRUST)
    )
    s3.create_multipart_upload(Bucket=s.upload.bucket, Key=object_key(s.upload.prefix, identity))
    left = f"{s.upload.prefix}left.raw"
    s3.put_object(Bucket=s.upload.bucket, Key=left, Body=bytes(512), Metadata={META_KEY: "k"})
    s3.create_multipart_upload(Bucket=s.upload.bucket, Key=f"{s.upload.prefix}half.raw")
    ec2(aws).import_snapshot(
        DiskContainer={"Format": "RAW", "UserBucket": {"S3Bucket": s.upload.bucket, "S3Key": left}},
        TagSpecifications=[
            {"ResourceType": "import-snapshot-task", "Tags": [{"Key": MANAGED, "Value": "true"}]}
        ],
    )


def test_iam_policy_lists_exactly_the_actions_of_a_full_run(
    compose: tuple[str, Path],
    guest: Guest,
    settings: Settings,
    aws: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run through every path: a failing boot test (console output), a passing run (upload
    reused, copies, publish), a bad upload (snapshot deleted), an upload by S3 + ImportSnapshot
    (a multipart upload continued), a worker's outcome records, gc removing an orphan and the
    import method's leftovers, prune (and the outcome records of what it removed), and the
    CLI's result table. Also: no AMI was made public before its test had passed."""
    location, xz = compose
    s = dataclasses.replace(
        settings.with_aws(regions=REGIONS),
        test=dataclasses.replace(settings.test, ssh_user="root", checks=SAMPLE_CHECKS),
        publish=dataclasses.replace(settings.publish, public_snapshots=True),
    )
    session = boto3.session.Session()
    rec = record(session)
    access = AccessRecorder(session, aws)
    clients = Clients(s.aws, session=session)

    def to_guest(instance: dict[str, Any], pkey: paramiko.PKey) -> SshTarget:
        return SshTarget(guest.host, guest.port, guest.pkey)

    failing = dataclasses.replace(
        s, test=dataclasses.replace(s.test, checks=(Check("no", "false"),))
    )
    first = Pipeline(failing, clients, tester=Ec2BootTester(failing, clients, to_guest))
    assert {i.status for i in first.run_compose(location).images} == {"test-failed"}
    assert rec.count("ModifyImageAttribute") == 0  # never public before a passing test

    second = Pipeline(s, clients, tester=Ec2BootTester(s, clients, to_guest))
    outcome = second.run_compose(location)
    assert outcome.ok
    for image in outcome.images:
        calls = [(op, p.get("ImageId")) for _, op, p in rec.calls]
        tested = max(i for i, c in enumerate(calls) if c == ("RunInstances", image.base_ami))
        public = calls.index(("ModifyImageAttribute", image.base_ami))
        assert tested < public

    bad = ImageIdentity("other.x86_64", "x86_64", "0" * 64)
    with pytest.raises(ChecksumMismatch):
        upload_image(str(xz), bad, s, clients)
    importing = import_settings(s)
    imported = ImageIdentity("imported.x86_64", "x86_64", sha256_file(xz))
    monkeypatch.setenv(options.IMPORT_SECONDS, "3600")  # the killed run's task stays active
    import_leftovers(aws, importing, imported)
    monkeypatch.setenv(options.IMPORT_SECONDS, "0.3")
    assert not upload_image(str(xz), imported, importing, clients).reused
    nightly = "Fedora-Rawhide-20250101.n.0"  # its AMI is pruned below, and with it its records
    record_outcome(clients, s.aws.base_region, nightly, imported.key, outcome.images[0])
    assert recorded_outcomes(clients, s.aws.base_region, nightly)
    ec2(aws).import_key_pair(
        KeyName="orphan",
        PublicKeyMaterial=throwaway_key()[1].encode(),
        TagSpecifications=[
            {
                "ResourceType": "key-pair",
                "Tags": [
                    {"Key": "fedimg:managed", "Value": "true"},
                    {"Key": "fedimg:role", "Value": "test"},
                ],
            }
        ],
    )
    import datetime as dt

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert gc_command(importing, clients, act=True, as_json=True, now=later) == 0
    assert rec.count("CancelImportTask") == rec.count("AbortMultipartUpload") == 1
    region_table(outcome, clients)
    aws_rows(s, clients)  # preflight's checks (read-only and dry runs) are part of the policy
    for respin in (0, 1):  # two nightlies of one group: prune removes the older one
        ec2(aws).register_image(
            Name=f"nightly-{respin}",
            TagSpecifications=[
                {
                    "ResourceType": "image",
                    "Tags": [
                        {"Key": "fedimg:managed", "Value": "true"},
                        {
                            "Key": "fedimg:compose-id",
                            "Value": f"Fedora-Rawhide-20250101.n.{respin}",
                        },
                        {"Key": "fedimg:compose-kind", "Value": "nightly"},
                        {"Key": "fedimg:subvariant", "Value": "Cloud_Base"},
                    ],
                }
            ],
        )
    pruning = dataclasses.replace(s, retention=RetentionSettings(keep_newest=1, nightly_days=0))
    assert (
        prune_command(pruning, clients, act=True, as_json=True, now=later + dt.timedelta(days=2))
        == 0
    )

    assert rec.count("DeleteParameters") == 1
    observed = {c.action for c in access.calls}
    assert observed - NEEDS_NO_PERMISSION == iam_actions()
    assert sha256_file(xz)  # the input was read, never written

    # Every call as IAM authorizes it, each resource with the tags it had at the call; and each
    # of those that fedimg:managed allowed, on a resource without it (a foreign one).
    calls = [c for c in access.calls if not c.params.get("DryRun")]  # dry runs: placeholders
    requests = [r for c in calls if c.action not in NEEDS_NO_PERMISSION for r in iam_requests(c)]
    foreign = [f for f in map(without_managed_tag, requests) if f is not None]
    verdicts = evaluate(requests + foreign)
    allowed, denied = verdicts[: len(requests)], verdicts[len(requests) :]
    refused = [
        (r["action"], r["resource"], v)
        for r, v in zip(requests, allowed, strict=True)
        if v != "Allowed"
    ]
    assert refused == [], "\n".join(map(str, refused))
    let_through = [
        (f["action"], f["resource"], v)
        for f, v in zip(foreign, denied, strict=True)
        if v != "ImplicitlyDenied"
    ]
    assert let_through == [], "\n".join(map(str, let_through))
    conditioned = {f["action"] for f in foreign}
    pairs = {(f["action"], f["resource"].split(":")[5].split("/")[0]) for f in foreign}
    print(
        f"IAM policy: {len(requests)} requests of a full run allowed; the {len(foreign)} of them "
        f"on resources without fedimg:managed ({len(pairs)} action x resource-type pairs) denied"
    )
    assert {"ec2:DeregisterImage", "ec2:ModifyImageAttribute", "ec2:DeleteSnapshot"} <= conditioned
    assert {"ec2:ImportSnapshot", "ec2:CancelImportTask"} <= conditioned  # the import method
