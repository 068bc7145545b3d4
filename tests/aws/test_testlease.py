"""The boot test's leases against the strict AWS stand-in: another run's clean-up removes a dead
run's test resources and never a live run's."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fedimg.aws import testlease
from fedimg.aws.testlease import RunLease, clean_up_earlier_tests
from tests.helpers import ec2


def leave_a_test(client: Any, ami: str, run: str, until: float) -> list[str]:
    """A key pair, security group and instance as a boot test run makes them; returns their ids
    as CreateTags takes them."""
    tags = {
        "fedimg:role": "test",
        "fedimg:ami": ami,
        "fedimg:test-run": run,
        "fedimg:lease-until": f"{until:.0f}",
    }

    def spec(kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]

    key = client.create_key_pair(KeyName=run, TagSpecifications=spec("key-pair"))
    group = client.create_security_group(
        GroupName=run, Description="boot test", TagSpecifications=spec("security-group")
    )["GroupId"]
    instance = client.run_instances(
        ImageId=ami,
        InstanceType="t3.small",
        KeyName=run,
        SecurityGroupIds=[group],
        MinCount=1,
        MaxCount=1,
        TagSpecifications=spec("instance"),
    )["Instances"][0]["InstanceId"]
    return [key["KeyPairId"], group, instance]


def test_a_live_runs_test_survives_and_dead_runs_tests_are_removed(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live: its lease is renewed while another run looks. Killed: its lease still runs but is
    never renewed. Expired: its lease ran out long ago."""
    monkeypatch.setattr(testlease, "LEASE_SECONDS", 1.0)
    client = ec2(aws)
    ami = client.register_image(Name="tested", RootDeviceName="/dev/sda1", Architecture="x86_64")
    ami_id = ami["ImageId"]
    now = time.time()
    live = RunLease(client)
    for resource in leave_a_test(client, ami_id, "live", now + 1):
        live.add(resource)
    leave_a_test(client, ami_id, "killed", now + 1)
    leave_a_test(client, ami_id, "expired", now - 3600)

    with live.renewed():
        clean_up_earlier_tests(client, ami_id, deadline_s=30)

    assert [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]] == ["live"]
    groups = client.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups if g["GroupName"] != "default"] == ["live"]
    running = [
        i["KeyName"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    assert running == ["live"]
