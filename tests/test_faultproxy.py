"""The fault proxy: real HTTP between boto3 and moto, with seeded faults botocore must absorb."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from tests.faultproxy import KINDS, fault_proxy

BLOCK = 512 * 1024


def client(service: str, url: str, *, attempts: int = 6, read_timeout: float = 1.5) -> Any:
    # botocore's "max_attempts" key counts retries; "total_max_attempts" counts attempts.
    cfg = botocore.config.Config(
        connect_timeout=1,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        max_pool_connections=16,
    )
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, config=cfg)


def new_snapshot(url: str) -> str:
    return str(client("ebs", url).start_snapshot(VolumeSize=1, Timeout=60)["SnapshotId"])


def put_block(ebs: Any, snapshot_id: str, index: int, data: bytes) -> None:
    ebs.put_snapshot_block(
        SnapshotId=snapshot_id,
        BlockIndex=index,
        BlockData=data,
        DataLength=len(data),
        Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        ChecksumAlgorithm="SHA256",
    )


@pytest.mark.slow  # a soak: ~5-10 s, longer when a call draws a run of throttling faults
def test_every_call_succeeds_through_a_30_percent_fault_rate(aws: str) -> None:
    snapshot_id = new_snapshot(aws)
    data = os.urandom(BLOCK)
    with fault_proxy(aws, rate=0.3, seed=7) as proxy:
        ec2, ebs = client("ec2", proxy.url), client("ebs", proxy.url)
        calls: list[Callable[[], object]] = [ec2.describe_images for _ in range(100)]
        calls += [
            lambda i=i: put_block(ebs, snapshot_id, i, data)  # type: ignore[misc]
            for i in range(100)
        ]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda call: call(), calls))  # raises the first failure, if any
        stats = proxy.stats()
        assert stats["invocations"] == 200
        assert all(stats["faults"][kind] > 0 for kind in KINDS), stats
        assert 1 < proxy.max_attempts_per_invocation() <= 6
    blocks = client("ebs", aws).list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=1000)
    assert len(blocks["Blocks"]) == 100


def test_rate_zero_forwards_everything_untouched(aws: str) -> None:
    snapshot_id = new_snapshot(aws)
    data = os.urandom(BLOCK)
    put_block(client("ebs", aws), snapshot_id, 3, data)
    direct = client("ebs", aws).get_snapshot_block(
        SnapshotId=snapshot_id, BlockIndex=3, BlockToken="t"
    )
    with fault_proxy(aws, rate=0.0) as proxy:
        ebs = client("ebs", proxy.url)
        got = []
        for _ in range(5):
            resp = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=3, BlockToken="t")
            got.append((resp["BlockData"].read(), resp["Checksum"], resp["DataLength"]))
        stats = proxy.stats()
    assert set(got) == {(data, direct["Checksum"], direct["DataLength"])}
    assert stats["faulted"] == 0 and stats["forwarded"] == stats["requests"] == 5
    assert stats["connections"] == 1  # one keep-alive connection carried all five
    assert proxy.max_attempts_per_invocation() == 1


def test_a_one_mib_body_goes_through_whole(aws: str) -> None:
    body = os.urandom(1024 * 1024)
    with fault_proxy(aws, rate=0.0) as proxy:
        s3 = client("s3", proxy.url)
        s3.create_bucket(Bucket="fedimg-proxy")
        s3.put_object(Bucket="fedimg-proxy", Key="one-mib", Body=body)
        got = s3.get_object(Bucket="fedimg-proxy", Key="one-mib")["Body"].read()
    assert got == body


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("500", ClientError, "InternalError"),
        ("503", ClientError, "RequestLimitExceeded"),
        ("reset", ConnectionClosedError, ""),
        ("slow", ReadTimeoutError, ""),
    ],
)
def test_all_faulted_fails_clearly_after_exactly_max_attempts(
    aws: str, kind: str, error: type[Exception], code: str
) -> None:
    with fault_proxy(
        aws, rate=1.0, kinds=(kind,), spare_last_attempt=False, slow_delay=(0.6, 0.6)
    ) as proxy:
        ec2 = client("ec2", proxy.url, attempts=2, read_timeout=0.3)
        with pytest.raises(error) as caught:
            ec2.describe_images()
        assert list(proxy.attempts().values()) == [2]
        assert proxy.stats()["faults"][kind] == 2
        # A slow fault outlasting the read timeout is seen to trip it: the client hung up (the
        # proxy notices the last hang-up within its 50 ms poll, hence the short wait).
        tripped = 2 if kind == "slow" else 0
        deadline = time.monotonic() + 2
        while proxy.stats()["slow_tripped"] < tripped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.stats()["slow_tripped"] == tripped
    if code:
        assert isinstance(caught.value, ClientError)
        assert caught.value.response["Error"]["Code"] == code
        assert "reached max retries: 1" in str(caught.value)


@pytest.mark.parametrize(
    ("service", "call", "throttled", "internal"),
    [
        ("ec2", lambda c: c.describe_images(), "RequestLimitExceeded", "InternalError"),
        (
            "ebs",
            lambda c: c.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0"),
            "ThrottlingException",
            "InternalServerException",
        ),
        ("ssm", lambda c: c.get_parameter(Name="/x"), "ThrottlingException", "InternalFailure"),
    ],
)
def test_error_bodies_are_parsed_in_each_protocol(
    aws: str, service: str, call: Callable[[Any], object], throttled: str, internal: str
) -> None:
    for kind, code in (("503", throttled), ("500", internal)):
        with (
            fault_proxy(aws, rate=1.0, kinds=(kind,), spare_last_attempt=False) as proxy,
            pytest.raises(ClientError) as caught,
        ):
            call(client(service, proxy.url, attempts=1))
        assert caught.value.response["Error"]["Code"] == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == int(kind)


def test_last_attempts_are_spared_and_the_rate_can_change(aws: str) -> None:
    with fault_proxy(aws, rate=1.0, kinds=("500",)) as proxy:
        ec2 = client("ec2", proxy.url, attempts=3)
        ec2.describe_images()  # attempts 1 and 2 fail, the announced last one is spared
        assert list(proxy.attempts().values()) == [3]
        assert proxy.stats()["spared_last_attempts"] == 1
        proxy.set_rate(0.0)
        ec2.describe_images()
        assert proxy.stats()["faulted"] == 2
        with pytest.raises(ValueError, match="rate"):
            proxy.set_rate(1.5)


def test_moto_control_calls_are_never_faulted(aws: str) -> None:
    import urllib.request

    with fault_proxy(aws, rate=1.0, spare_last_attempt=False) as proxy:
        for _ in range(3):
            with urllib.request.urlopen(f"{proxy.url}/moto-api/data.json", timeout=5) as r:
                assert r.status == 200
        assert proxy.stats()["faulted"] == 0


def test_fedimg_clients_make_at_most_max_attempts(settings: Settings, aws: str) -> None:
    with fault_proxy(aws, rate=1.0, kinds=("500",), spare_last_attempt=False) as proxy:
        clients = Clients(settings.with_aws(endpoint_url=proxy.url).aws)
        with pytest.raises(ClientError):
            clients.ec2("us-east-1").describe_images()
        assert proxy.max_attempts_per_invocation() == settings.aws.max_attempts


def test_a_slow_answer_within_the_read_timeout_is_forwarded_late_not_tripped(aws: str) -> None:
    with fault_proxy(
        aws, rate=1.0, kinds=("slow",), spare_last_attempt=False, slow_delay=(0.2, 0.2)
    ) as proxy:
        client("ec2", proxy.url, attempts=1, read_timeout=2.0).describe_images()
        stats = proxy.stats()
    assert stats["faults"]["slow"] == 1
    assert stats["slow_tripped"] == 0
    assert stats["forwarded"] == 1


def test_a_cut_answer_reaches_the_server_but_not_the_client(aws: str) -> None:
    with fault_proxy(
        aws, rate=1.0, kinds=("cut",), methods={"POST"}, max_faults=1, spare_last_attempt=False
    ) as proxy:
        ec2 = client("ec2", proxy.url, attempts=1)
        with pytest.raises(ConnectionClosedError):
            ec2.create_key_pair(KeyName="fedimg-cut")
        ec2.describe_key_pairs()  # max_faults: only the first POST is faulted
        stats = proxy.stats()
    assert stats["faults"]["cut"] == 1
    assert stats["methods"] == {"POST": 2}
    # The server acted on the request whose answer was lost.
    [pair] = client("ec2", aws).describe_key_pairs()["KeyPairs"]
    assert pair["KeyName"] == "fedimg-cut"
