"""SSM Parameter Store rules of the strict stand-in (names, hierarchy, aws:ec2:image).

Names are checked before moto's PutParameter (moto already refuses the reserved ``aws``/``ssm``
prefixes as AWS does). A value of DataType ``aws:ec2:image`` is validated asynchronously, as on
AWS: the new version is held back for ``options.ssm_validation_delay()`` seconds (reads still
see the previous version), then kept if it names an AMI of this account and region, or dropped.
Held versions settle lazily, at the next SSM request of that account and region.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from moto.core.exceptions import ServiceException
from moto.ec2.models import ec2_backends
from moto.ssm.models import Parameter, SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse
from moto.utilities.utils import get_partition

from fedimg.standins.aws import options

NAME_CHARACTERS = re.compile(r"^[a-zA-Z0-9_.\-/]+$")
MAX_LEVELS = 15
MAX_NAME_WITH_ARN = 1011
AMI_ID = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
EC2_IMAGE = "aws:ec2:image"


class SsmError(ServiceException):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)


def check_name_characters(name: str) -> None:
    """PutParameter, Name: only ``a-zA-Z0-9_.-`` and ``/`` between levels; a name with spaces
    between characters fails with ValidationException."""
    if not NAME_CHARACTERS.match(name):
        raise SsmError(
            "ValidationException",
            f"Parameter name {name!r}: only a-zA-Z0-9_.- and / are allowed.",
        )


def check_fully_qualified(name: str) -> None:
    """PutParameter, Name: "For parameters in a hierarchy, you must include a leading forward
    slash character (/)"; every level of the path has a name."""
    if "/" in name and (not name.startswith("/") or "" in name[1:].split("/")):
        raise SsmError(
            "ValidationException",
            f"Parameter name {name!r}: a hierarchy begins with / and names every level.",
        )


def check_hierarchy_depth(name: str) -> None:
    """PutParameter, Name: "Parameter hierarchies are limited to a maximum depth of fifteen
    levels" (HierarchyLevelLimitExceededException)."""
    levels = len([part for part in name.split("/") if part])
    if levels > MAX_LEVELS:
        raise SsmError(
            "HierarchyLevelLimitExceededException",
            f"A hierarchy can have a maximum of {MAX_LEVELS} levels; {name!r} has {levels}.",
        )


def check_name_length(name: str, account_id: str, region: str) -> None:
    """PutParameter, Name: at most 1011 characters, counting the ARN before the name
    (``arn:aws:ssm:REGION:ACCOUNT:parameter/``)."""
    arn = f"arn:{get_partition(region)}:ssm:{region}:{account_id}:parameter/"
    length = len(arn) + len(name.lstrip("/"))
    if length > MAX_NAME_WITH_ARN:
        raise SsmError(
            "ValidationException",
            f"Parameter name is {length} characters with its ARN; at most "
            f"{MAX_NAME_WITH_ARN} are allowed.",
        )


def ec2_image_acceptable(value: str, account_id: str, region: str) -> bool:
    """PutParameter, DataType ``aws:ec2:image``: Systems Manager "validates the parameter value
    is in the required format, such as ami-12345abcdeEXAMPLE, and that the specified AMI is
    available in your account" — asynchronously; "if you submit an invalid AMI value, the
    PutParameter operation will return success, but the asynchronous validation will fail and the
    parameter will not be created or updated"."""
    if not AMI_ID.match(value):
        return False
    ami = ec2_backends[account_id][region].amis.get(value)
    return ami is not None and getattr(ami, "state", "available") == "available"


@dataclass
class Held:
    """A version of an aws:ec2:image parameter whose validation has not finished yet."""

    parameter: Parameter
    due: float  # monotonic


@dataclass
class SsmState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: list[Held] = field(default_factory=list)
    rejected: list[tuple[str, int, str]] = field(default_factory=list)  # name, version, value


def state_of(backend: SimpleSystemManagerBackend) -> SsmState:
    """The rules' state of one account and region (gone with the backend on reset)."""
    return cast(SsmState, vars(backend).setdefault("_fedimg_strict_ssm", SsmState()))


def settle(backend: SimpleSystemManagerBackend) -> None:
    """Finishes the validations that are due: a valid version becomes the parameter's latest one,
    an invalid one is dropped (kept in ``rejected`` for whoever debugs)."""
    state = state_of(backend)
    now = time.monotonic()
    with state.lock:
        due = [h for h in state.held if h.due <= now]
        state.held = [h for h in state.held if h.due > now]
    for h in due:
        p = h.parameter
        if ec2_image_acceptable(p.value, backend.account_id, backend.region_name):
            versions = backend._parameters[p.name]
            versions.append(p)
            versions.sort(key=lambda v: v.version)
        else:
            state.rejected.append((p.name, p.version, p.value))


def hold_for_validation(backend: SimpleSystemManagerBackend, parameter: Parameter) -> None:
    """Takes the version moto just stored back out, until its validation is due."""
    versions = backend._parameters[parameter.name]
    versions.remove(parameter)
    if not versions:
        # moto treats a present name as an existing parameter; an empty list would break reads.
        del backend._parameters[parameter.name]
    state = state_of(backend)
    with state.lock:
        earlier = [h.parameter.version for h in state.held if h.parameter.name == parameter.name]
        if earlier:
            parameter.version = max(parameter.version, max(earlier) + 1)
        due = time.monotonic() + options.ssm_validation_delay()
        state.held.append(Held(parameter, due))


def put_parameter_as_aws(put: Any) -> Any:
    """Wraps moto's put_parameter with the name rules and the aws:ec2:image validation."""

    def put_parameter(self: SimpleSystemManagerBackend, name: str, *args: Any, **kw: Any) -> Any:
        name = name.strip()  # "The service removes any spaces ... beginning or end"
        check_name_characters(name)
        check_fully_qualified(name)
        check_hierarchy_depth(name)
        check_name_length(name, self.account_id, self.region_name)
        parameter = put(self, name, *args, **kw)
        if parameter.data_type == EC2_IMAGE:
            hold_for_validation(self, parameter)
        return parameter

    return put_parameter


def settle_first(call_action: Any) -> Any:
    """Every SSM request first finishes the validations that are due (lazily, no thread)."""

    def call(self: SimpleSystemManagerResponse) -> Any:
        settle(self.ssm_backend)
        return call_action(self)

    return call


def install() -> None:
    """Patches moto's SSM handlers with the rules above."""
    SimpleSystemManagerBackend.put_parameter = put_parameter_as_aws(  # type: ignore[method-assign]
        SimpleSystemManagerBackend.put_parameter
    )
    SimpleSystemManagerResponse.call_action = settle_first(  # type: ignore[method-assign]
        SimpleSystemManagerResponse.call_action
    )
