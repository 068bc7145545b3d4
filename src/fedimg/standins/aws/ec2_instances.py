"""RunInstances: ClientToken idempotency, metadata options, taggable resource types, and an
instance type of the AMI's architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.models.instance_types import INSTANCE_TYPES

from fedimg.standins.aws import ec2_rules as rules
from fedimg.standins.aws import timing
from fedimg.standins.aws.ec2_state import fingerprint, region_state
from fedimg.standins.aws.ec2_tags import tag_specifications
from fedimg.standins.aws.errors import refuse

# API_RunInstances.html, InstanceType: "Default: m1.small".
DEFAULT_INSTANCE_TYPE = "m1.small"


def run_instances(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """RunInstances (API_RunInstances.html) behind its rules; moto launches the instances."""
    original = _booting(original)

    def handler(self: Any) -> Any:
        rules.check_metadata_options(self._get_param("MetadataOptions") or {})
        tag_specifications(self, "RunInstances")
        check_architecture(
            self.ec2_backend,
            self._get_param("ImageId"),
            self._get_param("InstanceType") or DEFAULT_INSTANCE_TYPE,
        )
        token = self._get_param("ClientToken")
        if not token:
            return original(self)
        backend = self.ec2_backend
        state = region_state(backend)
        request = fingerprint(self.params)
        with state.lock:
            if token in state.run_tokens:
                return ActionResult(_same_launch(backend, token, state.run_tokens[token], request))
            result = original(self)
            state.run_tokens[token] = request
        return result

    return handler


def _same_launch(backend: Any, token: str, first_request: str, request: str) -> Any:
    """API_RunInstances.html, ClientToken (ec2 "Ensuring idempotency"): a retried launch returns
    the first launch's reservation; the same token with other parameters is
    ``IdempotentParameterMismatch``."""
    if first_request != request:
        refuse(
            "IdempotentParameterMismatch",
            "The client token was already used with different request parameters",
        )
    for reservation in backend.reservations.values():
        if any(i.client_token == token for i in reservation.instances):
            return reservation
    refuse("IdempotentParameterMismatch", f"No launch is left for client token {token}")


def _booting(launch: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """With the time model on, new instances boot for their modelled time (``timing``)."""

    def handler(self: Any) -> Any:
        result = launch(self)
        timing.start_boot(list(result.result.instances))
        return result

    return handler


def check_architecture(backend: Any, image_id: str | None, instance_type: str) -> None:
    """An instance runs only an AMI of an architecture its type supports: the type's
    ``ProcessorInfo.SupportedArchitectures`` (API_ProcessorInfo.html, as DescribeInstanceTypes
    gives it; moto ships AWS's table: t3.* x86_64, t4g.* arm64) must hold the AMI's
    ``Architecture``. The reference names no code; AWS answers ``InvalidParameterValue`` ("The
    architecture 'x86_64' of the specified instance type does not match the architecture 'arm64'
    of the specified AMI"). An AMI or type the stand-in does not know is left to moto."""
    ami = backend.amis.get(image_id) if image_id else None
    known = INSTANCE_TYPES.get(instance_type)
    if ami is None or known is None or not ami.architecture:
        return
    supported = known.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    if ami.architecture not in supported:
        refuse(
            "InvalidParameterValue",
            f"The architecture '{'/'.join(supported)}' of the specified instance type does not "
            f"match the architecture '{ami.architecture}' of the specified AMI",
        )
