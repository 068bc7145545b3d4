"""Crash and resume: the pipeline process is SIGKILLed at each step, then run again.

End state every time: exactly one AMI per image per region, public; SSM parameters pointing at
them; no leftover fedimg snapshots, instances, key pairs or security groups. (moto's StartSnapshot
also makes a volume, which EBS direct on AWS does not: volumes are not counted.) When the image's
checks fail: its base AMI private, no copies and no copies' snapshots anywhere, nothing public.
With copies running during the test: the time model is on, so that they are still pending.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedimg.boot.qemu import Guest, running_guest
from fedimg.boot.sample import sample_image
from fedimg.standins.aws.options import TIME_SCALE
from tests.crashdriver import POINTS
from tests.helpers import ec2, served_compose

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_compose(tmp_path_factory.mktemp("compose"), 24, 0.5) as (url, _):
        yield url


@pytest.fixture(scope="module")
def guest_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[paramiko.PKey, str, Path]:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    path.write_bytes(pem)
    path.chmod(0o600)
    pkey = paramiko.Ed25519Key.from_private_key_file(str(path))
    return pkey, f"{pkey.get_name()} {pkey.get_base64()}", path


@pytest.fixture(scope="module")
def guest(build_dir: Path, guest_key: tuple[paramiko.PKey, str, Path]) -> Iterator[Guest]:
    pkey, public, _ = guest_key
    with running_guest(sample_image(build_dir), "bios", "root", key=(pkey, public)) as g:
        yield g


FAILING = frozenset({"failed-test-before-removal", "failed-test-mid-removal"})
# Real seconds per AWS second: copies pending for 0.6-2.4 s, status checks for 1.2 s.
TIMED = {"copies-during-test": "0.01"}


def write_config(tmp_path: Path, aws: str, check: str = "/bin/true") -> Path:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = {json.dumps(list(REGIONS))}\n'
        "max_attempts = 2\nwait_seconds = 60\nupload_workers = 4\n"
        "[publish]\ndeprecate_after_days = 0\n"
        '[test]\nssh_user = "root"\nssh_seconds = 30\nssh_cidr = "127.0.0.1/32"\n'
        f'[[test.checks]]\nname = "check"\ncommand = "{check}"\n'
    )
    return cfg


def run(cfg: Path, compose: str, point: str, guest: Guest, key: Path) -> tuple[int, str]:
    """The driver's exit status, and the end of its error output (for the assertion message)."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.crashdriver",
            str(cfg),
            compose,
            point,
            str(guest.port),
            str(key),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        text=True,
    )
    return proc.returncode, proc.stderr[-3000:]


def end_state(aws: str) -> dict[str, object]:
    state: dict[str, object] = {}
    for region in REGIONS:
        client = ec2(aws, region)
        images = client.describe_images(Owners=["self"])["Images"]
        state[f"{region} images"] = sorted(i["Name"].split("-hvm-")[0][-7:] for i in images)
        state[f"{region} public"] = sorted(
            {"Group": "all"}
            in client.describe_image_attribute(ImageId=i["ImageId"], Attribute="launchPermission")[
                "LaunchPermissions"
            ]
            for i in images
        )
        state[f"{region} snapshots"] = len(
            client.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        )
        ssm = boto3.client("ssm", region_name=region, endpoint_url=aws)
        state[f"{region} ssm"] = sorted(
            p["Value"] in {i["ImageId"] for i in images}
            for p in ssm.get_parameters_by_path(Path="/fedimg", Recursive=True)["Parameters"]
        )
    base = ec2(aws)
    snaps = base.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["fedimg:state"]}]
    )["Snapshots"]
    state["snapshot states"] = sorted(
        next(t["Value"] for t in s["Tags"] if t["Key"] == "fedimg:state") for s in snaps
    )
    state["live instances"] = [
        i["InstanceId"]
        for r in base.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    state["key pairs"] = [k["KeyName"] for k in base.describe_key_pairs()["KeyPairs"]]
    state["security groups"] = [
        g["GroupName"]
        for g in base.describe_security_groups()["SecurityGroups"]
        if g["GroupName"] != "default"
    ]
    return state


EXPECTED = {
    **{f"{r} images": [".x86_64", "aarch64"] for r in REGIONS},
    **{f"{r} public": [True, True] for r in REGIONS},
    **{f"{r} snapshots": 2 for r in REGIONS},
    **{f"{r} ssm": [True, True] for r in REGIONS},
    "snapshot states": ["uploaded", "uploaded"],
    "live instances": [],
    "key pairs": [],
    "security groups": [],
}


# The images' checks failed: the base AMIs stay private, the copies are gone.
EXPECTED_FAILED = EXPECTED | {
    **{f"{r} images": [] for r in REGIONS[1:]},
    **{f"{r} public": [] for r in REGIONS[1:]},
    **{f"{r} snapshots": 0 for r in REGIONS[1:]},
    **{f"{r} ssm": [] for r in REGIONS},
    f"{REGIONS[0]} public": [False, False],
}


def copies_held(aws: str) -> list[tuple[str, bool]]:
    """The state of each copy in the other regions, and whether anyone else may launch it."""
    held = []
    for region in REGIONS[1:]:
        client = ec2(aws, region)
        for image in client.describe_images(Owners=["self"])["Images"]:
            launch = client.describe_image_attribute(
                ImageId=image["ImageId"], Attribute="launchPermission"
            )["LaunchPermissions"]
            held.append((image["State"], bool(launch)))
    return held


@pytest.mark.parametrize("point", sorted(POINTS))
def test_killed_run_is_finished_by_the_next(
    point: str,
    aws: str,
    compose: str,
    guest: Guest,
    guest_key: tuple[paramiko.PKey, str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if point in TIMED:  # the stand-in (in this process) reads it at each request
        monkeypatch.setenv(TIME_SCALE, TIMED[point])
    cfg = write_config(tmp_path, aws, "/bin/false" if point in FAILING else "/bin/true")
    key = guest_key[2]
    killed = run(cfg, compose, point, guest, key)
    assert killed[0] == -9, killed  # SIGKILL
    if point in TIMED:  # killed while the copies were made, during the tests
        assert sorted(copies_held(aws)) == [("pending", False)] * 4
    if point == "failed-test-before-removal":
        assert sorted(copies_held(aws)) == [("available", False)] * 4
    again = run(cfg, compose, "none", guest, key)
    if point in FAILING:
        assert again[0] == 1, again  # the images' tests failed: not published
        assert end_state(aws) == EXPECTED_FAILED
    else:
        assert again[0] == 0, again
        assert end_state(aws) == EXPECTED
