"""fedimg preflight on the strict AWS stand-in: a good account passes every row and nothing is
created; then each of the account's problems is made real (a stand-in knob or an API call) and
its row blocks (or warns) with the fix."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from click.testing import CliRunner

from fedimg.aws.clients import Clients
from fedimg.cli import main
from fedimg.config import Settings
from fedimg.preflight import BLOCKER, GLOBAL, OK, UNCHECKED, WARNING, Row, run_preflight
from fedimg.preflight_aws import (
    aws_rows,
    enabled_region_rows,
    permission_row,
    preflight_clients,
    principal_arn,
    public_quota_row,
    simulated_row,
)
from fedimg.preflight_dryruns import DRY_RUNS, ON_EXISTING
from fedimg.preflight_network import network_row
from fedimg.preflight_services import service_rows
from fedimg.standins.aws import options
from fedimg.standins.moto import free_port
from fedimg.standins.resultsdb import resultsdb_standin
from fedimg.standins.samplecompose import serve_directory
from tests.helpers import ec2, record

ROOT = Path(__file__).resolve().parent.parent
BASE = "us-east-1"
ME = "arn:aws:sts::123456789012:user/moto"
PER_REGION = ("EC2 permissions", "public AMI quota", "block public access")


@pytest.fixture
def clients(settings: Settings) -> Clients:
    return preflight_clients(settings)


def by_region(rows: list[Row], check: str) -> dict[str, Row]:
    return {r.region: r for r in rows if r.check == check}


def inventory(aws: str, regions: tuple[str, ...]) -> dict[str, Any]:
    """Everything preflight could have created, per region."""
    seen: dict[str, Any] = {}
    for region in regions:
        c = ec2(aws, region)
        seen[region] = (
            c.describe_images(Owners=["self"])["Images"],
            c.describe_snapshots(OwnerIds=["self"])["Snapshots"],
            sorted(g["GroupId"] for g in c.describe_security_groups()["SecurityGroups"]),
            c.describe_key_pairs()["KeyPairs"],
            c.describe_instances()["Reservations"],
            c.describe_vpcs()["Vpcs"],
        )
    return seen


def test_a_good_account_passes_every_row_and_nothing_is_created(
    settings: Settings, aws: str, amqp_url: str, tmp_path: Path
) -> None:
    regions = settings.aws.regions
    before = inventory(aws, regions)
    with resultsdb_standin() as rdb, serve_directory(tmp_path) as compose:
        s = dataclasses.replace(
            settings, resultsdb=dataclasses.replace(settings.resultsdb, url=rdb)
        )
        rows = run_preflight(s, compose_url=compose, amqp_url=amqp_url)
    assert [r for r in rows if r.status != OK] == []
    expected = {("credentials", GLOBAL), ("EBS direct and SSM permissions", GLOBAL)}
    expected |= {("region enabled", r) for r in regions}
    expected |= {(check, r) for check in PER_REGION for r in regions}
    expected |= {("boot test network", BASE), ("compose server", "-"), ("ResultsDB", "-")}
    expected |= {("broker", "-")}
    assert sorted((r.check, r.region) for r in rows) == sorted(expected)
    assert inventory(aws, regions) == before


def test_without_credentials_only_the_credentials_row_is_shown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    [row] = aws_rows(settings)
    assert (row.check, row.status) == ("credentials", BLOCKER)
    assert "Unable to locate credentials" in row.detail and "AWS_PROFILE" in row.action


def test_a_region_not_enabled_or_of_another_partition_blocks(
    settings: Settings, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.DISABLED_REGIONS, "eu-west-1")
    regions = [BASE, "eu-west-1", "cn-north-1"]
    rows = {r.region: r for r in enabled_region_rows(clients, BASE, regions, "aws")}
    assert [rows[r].status for r in regions] == [OK, BLOCKER, BLOCKER]
    assert "enable-region --region-name eu-west-1" in rows["eu-west-1"].action
    assert "partition aws-cn" in rows["cn-north-1"].detail
    # A region that is not enabled gets no further checks (they would only fail AuthFailure).
    checked = by_region(aws_rows(settings), "EC2 permissions")
    assert set(checked) == set(settings.aws.regions) - {"eu-west-1"}


def test_a_denied_ec2_action_blocks_its_region_naming_the_permission(
    aws: str, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.DENY, "ec2:CopyImage,ec2:ImportKeyPair")
    row = permission_row(clients.ec2("eu-west-1"), "eu-west-1")
    assert row.status == BLOCKER
    assert row.detail == "denied: ec2:CopyImage, ec2:ImportKeyPair"
    assert "iam-policy.json" in row.action


def test_a_refused_dry_run_on_a_placeholder_resource_needs_the_tag_and_does_not_block(
    aws: str, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy allows acting only on resources tagged fedimg:managed, which the placeholder
    ids of these dry runs are not: UnauthorizedOperation there says nothing about the policy."""
    monkeypatch.setenv(options.DENY, "ec2:ModifySnapshotAttribute,ec2:DeregisterImage")
    row = permission_row(clients.ec2(BASE), BASE)
    assert row.status == UNCHECKED
    assert row.detail == (
        "needs fedimg:managed on the resource: ec2:ModifySnapshotAttribute, ec2:DeregisterImage"
    )


def test_the_creating_dry_runs_tag_what_they_would_create_fedimg_managed(aws: str) -> None:
    session = boto3.session.Session()
    rec = record(session)
    permission_row(session.client("ec2", region_name=BASE, endpoint_url=aws), BASE)
    creating = set(DRY_RUNS) - ON_EXISTING
    for action in ("CopyImage", "CreateSecurityGroup", "ImportKeyPair", "ImportSnapshot"):
        (params,) = rec.of(action)
        specs = params["TagSpecifications"]
        assert specs and all(
            {"Key": "fedimg:managed", "Value": "true"} in spec["Tags"] for spec in specs
        )
        assert action in creating


def test_the_dry_runs_are_every_ec2_action_of_the_iam_policy() -> None:
    """Every EC2 action of the policy takes DryRun (botocore's EC2 model) and has a dry run."""
    policy = json.loads((ROOT / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    ec2_actions = {a.split(":", 1)[1] for a in actions if a.startswith("ec2:")}
    model = botocore.session.get_session().get_service_model("ec2")
    dry_runnable = {
        a for a in ec2_actions if "DryRun" in model.operation_model(a).input_shape.members
    }
    assert dry_runnable == ec2_actions
    assert set(DRY_RUNS) == ec2_actions
    assert set(DRY_RUNS) >= ON_EXISTING


def test_ebs_and_ssm_permissions_come_from_the_policy_simulator(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.DENY, "ebs:StartSnapshot,ssm:PutParameter")
    row = simulated_row(clients, BASE, ME)
    assert (row.status, row.detail) == (
        BLOCKER,
        "denied (policy simulator): ebs:StartSnapshot, ssm:PutParameter",
    )
    monkeypatch.setenv(options.DENY, "iam:SimulatePrincipalPolicy,ebs:StartSnapshot")
    row = simulated_row(clients, BASE, ME)
    assert row.status == UNCHECKED and "iam:SimulatePrincipalPolicy" in row.action


def test_the_principal_simulated_is_the_callers_user_or_role() -> None:
    session = "arn:aws:sts::111122223333:assumed-role/fedimg-publisher/i-0abc"
    assert principal_arn(session) == "arn:aws:iam::111122223333:role/fedimg-publisher"
    user = "arn:aws-cn:iam::111122223333:user/ops/fedimg"
    assert principal_arn(user) == user
    assert principal_arn("arn:aws:sts::111122223333:federated-user/bob") is None


def make_public(aws: str, *names: str) -> None:
    c = ec2(aws)
    for name in names:
        image = c.register_image(Name=name, VirtualizationType="hvm")["ImageId"]
        c.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"Group": "all"}]})


def test_the_public_ami_quota_warns_below_one_compose_and_blocks_when_used_up(
    aws: str, settings: Settings, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(options.PUBLIC_AMI_QUOTA, "3")

    def row() -> Row:
        return public_quota_row(clients, clients.ec2(BASE), BASE, settings)

    # A compose publishes 2 AMIs (x86_64, aarch64): 1 left is too few.
    make_public(aws, "first", "second")
    assert (row().status, row().detail) == (WARNING, "2 of 3 public AMIs used; a compose needs 2")
    make_public(aws, "third")
    assert row().status == BLOCKER and "L-0E3CBAB9" in row().action
    monkeypatch.setenv(options.DENY, "servicequotas:GetServiceQuota")
    assert (row().status, row().detail[:18]) == (UNCHECKED, "3 public AMIs; quo")


def test_block_public_access_blocks_what_the_configuration_publishes(
    aws: str, settings: Settings, clients: Clients
) -> None:
    from fedimg.preflight_aws import block_public_access_row

    c = clients.ec2(BASE)
    c.enable_snapshot_block_public_access(State="block-new-sharing")
    assert block_public_access_row(settings, c, BASE).status == OK  # snapshots stay private
    snapshots = dataclasses.replace(
        settings, publish=dataclasses.replace(settings.publish, public_snapshots=True)
    )
    assert (
        "disable-snapshot-block-public-access" in block_public_access_row(snapshots, c, BASE).detail
    )
    c.enable_image_block_public_access(ImageBlockPublicAccessState="block-new-sharing")
    row = block_public_access_row(settings, c, BASE)
    assert row.status == BLOCKER and "disable-image-block-public-access" in row.detail


@pytest.fixture
def default_subnets(clients: Clients) -> Iterator[list[str]]:
    c = clients.ec2(BASE)
    [vpc] = c.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    found = c.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    yield [s["SubnetId"] for s in found["Subnets"]]


def test_the_boot_network_needs_subnets_that_give_public_addresses(
    settings: Settings, clients: Clients, default_subnets: list[str]
) -> None:
    c = clients.ec2(BASE)
    first, *rest = default_subnets
    c.modify_subnet_attribute(SubnetId=first, MapPublicIpOnLaunch={"Value": False})
    row = network_row(settings, c, BASE)
    assert (
        row.status == WARNING and first in row.detail and "--map-public-ip-on-launch" in row.action
    )
    for subnet in rest:
        c.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": False})
    assert network_row(settings, c, BASE).status == BLOCKER


def test_no_default_vpc_blocks_the_boot_test(
    settings: Settings, clients: Clients, default_subnets: list[str]
) -> None:
    c = clients.ec2(BASE)
    vpc = c.describe_subnets(SubnetIds=default_subnets[:1])["Subnets"][0]["VpcId"]
    for subnet in default_subnets:
        c.delete_subnet(SubnetId=subnet)
    c.delete_vpc(VpcId=vpc)
    row = network_row(settings, c, BASE)
    assert row.status == BLOCKER and f"create-default-vpc --region {BASE}" in row.action
    off = dataclasses.replace(settings, test=dataclasses.replace(settings.test, enabled=False))
    assert by_region(aws_rows(off), "boot test network") == {}  # no boot test, no network


def test_services_that_do_not_answer(settings: Settings) -> None:
    closed = f"http://user:secret@127.0.0.1:{free_port()}"
    s = dataclasses.replace(
        settings, resultsdb=dataclasses.replace(settings.resultsdb, url=f"{closed}/api/v2.0")
    )
    rows = service_rows(
        s, compose_url=f"{closed}/compose", amqp_url=f"amqp://127.0.0.1:{free_port()}"
    )
    assert [(r.check, r.status) for r in rows] == [
        ("compose server", BLOCKER),
        ("ResultsDB", WARNING),  # reporting never blocks publishing
        ("broker", BLOCKER),
    ]
    assert all("secret" not in r.detail for r in rows)


def test_cli_table_json_and_exit_status(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "fedimg.toml"
    config.write_text(f'[aws]\nendpoint_url = "{aws}"\nregions = ["{BASE}"]\nmax_attempts = 2\n')
    runner = CliRunner()
    ok = runner.invoke(main, ["preflight", "--json", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.output)
    assert {tuple(sorted(r)) for r in rows} == {("action", "check", "detail", "region", "status")}
    assert {r["status"] for r in rows} == {OK}
    monkeypatch.setenv(options.DENY, "ec2:CopyImage")
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when not on a terminal
    blocked = runner.invoke(main, ["--config", str(config), "preflight"])
    assert blocked.exit_code == 1
    assert "blocked: fix the blockers first" in blocked.output
    assert "denied: ec2:CopyImage" in blocked.output
