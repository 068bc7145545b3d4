"""Test helpers: record what fedimg *sends* to AWS (moto drops most RegisterImage attributes)."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

import boto3


@dataclass
class Recorder:
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self.lock:
            self.calls.append((model.service_model.service_name, model.name, copy.copy(params)))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [p for _, op, p in self.calls if op == operation]

    def count(self, operation: str) -> int:
        return len(self.of(operation))


def record(session: boto3.session.Session) -> Recorder:
    """Records every API call made by clients of ``session`` (created after this call)."""
    rec = Recorder()
    session.events.register("provide-client-params", rec.hook)
    return rec


def ec2(url: str, region: str = "us-east-1") -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=url)


def ebs(url: str, region: str = "us-east-1") -> Any:
    return boto3.client("ebs", region_name=region, endpoint_url=url)
