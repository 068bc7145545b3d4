"""ImportSnapshot, DescribeImportSnapshotTasks and CancelImportTask (moto answers them with 500).

A task reads its disk from moto's S3 and ends as a completed EBS snapshot whose blocks
(GetSnapshotBlock) hold exactly the object's bytes. Its states follow the API reference
(SnapshotTaskDetail: Status, StatusMessage, Progress) and the VM Import/Export User Guide:
``active`` (``pending``, then ``downloading/converting`` with a rising Progress) → ``completed``;
a disk it cannot import, and a cancelled task, go ``deleting`` → ``deleted`` with a StatusMessage.

States are computed lazily from the task's age when a request reads it (no thread):
``options.import_seconds()`` is a whole task's real duration, ``options.import_stall_at()`` a
progress at which tasks hang. Tasks live on moto's EC2 backend, so ``moto-api/reset`` forgets them.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from moto.core.responses import ActionResult
from moto.ebs.models import ebs_backends

from fedimg.standins.aws import ebs, ebs_rules, options
from fedimg.standins.aws import ec2_rules as rules
from fedimg.standins.aws.ec2_state import fingerprint
from fedimg.standins.aws.ec2_tags import tags_for
from fedimg.standins.aws.errors import refuse

BLOCK_SIZE = 524288
SECTOR = 512
GIB = 1024**3
# API_SnapshotDiskContainer.html, Format: "Valid values: VHD | VMDK | RAW".
FORMATS = ("VHD", "VMDK", "RAW")
# API_ImportSnapshot.html, RoleName: "The name of the role to use when not using the default
# role, 'vmimport'"; the role must trust the VM Import service (VM Import/Export User Guide,
# "Required service role").
DEFAULT_ROLE = "vmimport"
VMIE_PRINCIPAL = "vmie.amazonaws.com"
# The trust policy of that role, for the demo, tests and benchmarks that create it on the stand-in.
VMIMPORT_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": VMIE_PRINCIPAL}, "Action": "sts:AssumeRole"}
    ],
}
# API_ImportSnapshot.html, TagSpecifications: tags for the import snapshot task.
TASK_RESOURCE_TYPE = "import-snapshot-task"
# The fraction of a task's time spent ``pending`` before the disk is read, and the fraction
# after which a refused task is ``deleted`` (``deleting`` in between).
PENDING_UNTIL = 0.1
DELETED_AFTER = 0.2
CANCEL_SECONDS = 0.05  # deleting → deleted after CancelImportTask
# StatusMessages. The format one is AWS's as reported for a disk it cannot read; the others
# follow its "ClientError: Disk validation failed [...]" pattern.
UNSUPPORTED_FORMAT = "ClientError: Disk validation failed [Unsupported specified file format]"
MISSING_OBJECT = "ClientError: Disk validation failed [Invalid S3 source location]"
PARTIAL_SECTOR = "ClientError: Disk validation failed [Disk size is not a multiple of 512 bytes]"
# The magic numbers of the formats the stand-in can recognise but does not convert.
VHD_FOOTER = b"conectix"
VMDK_MAGIC = b"KDMV"


@dataclass
class Task:
    task_id: str
    description: str
    bucket: str
    key: str
    disk_format: str
    tags: dict[str, str]
    started: float  # monotonic
    duration: float
    status: str = "active"
    message: str = "pending"
    progress: int = 0
    snapshot_id: str = ""
    disk_bytes: int = 0
    failed_at: float = 0.0  # fraction of the duration at which it was refused (0: it was not)
    cancelled_at: float = 0.0  # monotonic

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "Description": self.description,
            "DiskImageSize": float(self.disk_bytes),
            "Format": self.disk_format,
            "Status": self.status,
            "UserBucket": {"S3Bucket": self.bucket, "S3Key": self.key},
        }
        if self.status == "active":
            detail["Progress"] = str(self.progress)
        if self.message:
            detail["StatusMessage"] = self.message
        if self.snapshot_id:
            detail["SnapshotId"] = self.snapshot_id
        return detail

    def described(self) -> dict[str, Any]:
        return {
            "Description": self.description,
            "ImportTaskId": self.task_id,
            "SnapshotTaskDetail": self.detail(),
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(self.tags.items())],
        }


@dataclass
class ImportState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    tasks: dict[str, Task] = field(default_factory=dict)
    # ClientToken -> (fingerprint of the request's other parameters, task id).
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)


def import_state(backend: Any) -> ImportState:
    return cast(ImportState, vars(backend).setdefault("_fedimg_import", ImportState()))


# --- rules ---------------------------------------------------------------------------------


def check_role(account_id: str, role_name: str) -> None:
    """API_ImportSnapshot.html, RoleName, and the VM Import/Export User Guide ("Required service
    role"): the role must exist and trust ``vmie.amazonaws.com``; otherwise AWS refuses the call
    ``InvalidParameter``, "The service role <name> provided does not exist or does not have
    sufficient permissions"."""
    from moto.iam.models import iam_backends

    why = (
        f"The service role {role_name} provided does not exist "
        "or does not have sufficient permissions"
    )
    try:
        role = iam_backends[account_id]["global"].get_role(role_name)
    except Exception:
        refuse("InvalidParameter", why)
    if not trusts_vm_import(role.assume_role_policy_document):
        refuse("InvalidParameter", why)


def trusts_vm_import(document: Any) -> bool:
    """Whether a trust policy lets the VM Import service assume the role."""
    try:
        policy = json.loads(document) if isinstance(document, str) else dict(document)
    except ValueError:
        return False
    statements = policy.get("Statement", [])
    for s in [statements] if isinstance(statements, dict) else statements:
        actions = s.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        services = s.get("Principal", {}).get("Service", [])
        services = [services] if isinstance(services, str) else services
        if (
            s.get("Effect") == "Allow"
            and "sts:AssumeRole" in actions
            and VMIE_PRINCIPAL in services
        ):
            return True
    return False


def disk_location(container: dict[str, Any] | None) -> tuple[str, str, str]:
    """API_SnapshotDiskContainer.html: the disk is ``Url`` (``s3://bucket/key``) or
    ``UserBucket``; Format one of VHD | VMDK | RAW (``InvalidParameterValue`` otherwise)."""
    container = container or {}
    disk_format = str(container.get("Format") or "").upper()
    if disk_format not in FORMATS:
        refuse(
            "InvalidParameterValue",
            f"Value ({container.get('Format')}) for parameter Format is invalid",
        )
    bucket = container.get("UserBucket") or {}
    if bucket.get("S3Bucket") and bucket.get("S3Key"):
        return str(bucket["S3Bucket"]), str(bucket["S3Key"]), disk_format
    url = str(container.get("Url") or "")
    if url.startswith("s3://") and "/" in url[5:]:
        name, _, key = url[5:].partition("/")
        return name, key, disk_format
    refuse("InvalidParameter", "DiskContainer needs UserBucket (S3Bucket, S3Key) or an s3:// Url")


def disk_refusal(data: bytes | None, disk_format: str) -> str:
    """Why the task cannot import this disk ("" if it can): the object must exist (VM
    Import/Export User Guide, the disk is read from S3 by the service role), be non-empty and a
    whole number of 512-byte sectors for RAW, and carry its format's signature for VHD (the
    ``conectix`` footer) or VMDK (``KDMV``); the stand-in converts RAW only."""
    if data is None:
        return MISSING_OBJECT
    if not data:
        return UNSUPPORTED_FORMAT
    if disk_format == "RAW":
        return PARTIAL_SECTOR if len(data) % SECTOR else ""
    if disk_format == "VHD" and data[-512:].startswith(VHD_FOOTER):
        return "ClientError: the stand-in converts RAW disks only"
    if disk_format == "VMDK" and data.startswith(VMDK_MAGIC):
        return "ClientError: the stand-in converts RAW disks only"
    return UNSUPPORTED_FORMAT


# --- the task's life, evaluated when read --------------------------------------------------


def settle(task: Task, account_id: str, region: str) -> None:
    """Moves ``task`` to where its age says it is."""
    now = time.monotonic()
    if task.status in ("completed", "deleted"):
        return
    if task.status == "deleting":
        done = task.cancelled_at and now - task.cancelled_at >= CANCEL_SECONDS
        if done or (task.failed_at and _fraction(task, now) >= DELETED_AFTER):
            task.status = "deleted"
        return
    fraction = _fraction(task, now)
    stall = options.import_stall_at()
    if stall is not None:
        fraction = min(fraction, stall / 100)
    if fraction < PENDING_UNTIL:
        return
    if task.message == "pending":
        why = disk_refusal(_object_bytes(account_id, task.bucket, task.key), task.disk_format)
        if why:
            task.status, task.message, task.failed_at = "deleting", why, fraction
            return
        task.message = "downloading/converting"
    if fraction < 1.0:
        task.progress = max(task.progress, min(99, int(fraction * 100)))
        return
    data = _object_bytes(account_id, task.bucket, task.key)
    why = disk_refusal(data, task.disk_format)
    if why or data is None:
        task.status, task.message, task.failed_at = "deleted", why or MISSING_OBJECT, fraction
        return
    task.snapshot_id = _snapshot_of(account_id, region, data, task.task_id)
    task.disk_bytes = len(data)
    task.status, task.message, task.progress = "completed", "", 100


def _fraction(task: Task, now: float) -> float:
    return (now - task.started) / task.duration if task.duration > 0 else 1.0


def _object_bytes(account_id: str, bucket: str, key: str) -> bytes | None:
    from moto.s3.models import s3_backends

    try:
        found = s3_backends[account_id]["aws"].get_object(bucket, key)
    except Exception:
        return None
    return bytes(found.value) if found is not None else None


def _snapshot_of(account_id: str, region: str, data: bytes, task_id: str) -> str:
    """A completed snapshot whose non-zero 512 KiB blocks are ``data``'s, readable by EBS direct."""
    backend = ebs_backends[account_id][region]
    gib = max(1, math.ceil(len(data) / GIB))
    snapshot = backend.start_snapshot(
        volume_size=gib, tags=None, description=f"Created by AWS-VMImport service for {task_id}"
    )
    snapshot.block_size = BLOCK_SIZE
    ec2_snapshot = backend.ec2_backend.snapshots[snapshot.snapshot_id]
    backend.ec2_backend.volumes.pop(ec2_snapshot.volume.id, None)
    for index in range(math.ceil(len(data) / BLOCK_SIZE)):
        block = data[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
        if block.count(0) != BLOCK_SIZE:
            snapshot.put_block(index, block, None, None, BLOCK_SIZE)
    now = time.monotonic()
    with ebs.state_of(backend).lock:
        ebs.state_of(backend).uploads[snapshot.snapshot_id] = ebs.Upload(
            timeout_minutes=ebs_rules.DEFAULT_TIMEOUT_MINUTES, last_write=now, visible_at=now
        )
    ebs.set_state(snapshot, ec2_snapshot, "completed")
    return str(snapshot.snapshot_id)


# --- handlers: methods of moto's EC2Response -----------------------------------------------


def import_snapshot(self: Any) -> ActionResult:
    """ImportSnapshot (API_ImportSnapshot.html): ClientToken idempotency (a reused token with
    other parameters is ``IdempotentParameterMismatch``, EC2's common client errors), the disk
    container, the service role, and tags for the task."""
    p = self._get_param
    params = {
        "Description": p("Description"),
        "DiskContainer": p("DiskContainer"),
        "RoleName": p("RoleName"),
        "TagSpecifications": p("TagSpecifications"),
    }
    token = p("ClientToken")
    state = import_state(self.ec2_backend)
    with state.lock:
        if token and token in state.tokens:
            first, task_id = state.tokens[token]
            if first != fingerprint(params):
                refuse(
                    "IdempotentParameterMismatch",
                    "The client token was used before with different parameters",
                )
            task = state.tasks[task_id]
            settle(task, self.current_account, self.region)
            return ActionResult(task.described())
        bucket, key, disk_format = disk_location(params["DiskContainer"])
        check_role(self.current_account, params["RoleName"] or DEFAULT_ROLE)
        specs = _tag_specifications(params["TagSpecifications"])
        self.error_on_dryrun()
        task = Task(
            task_id=f"import-snap-{uuid.uuid4().hex[:17]}",
            description=params["Description"] or "",
            bucket=bucket,
            key=key,
            disk_format=disk_format,
            tags=tags_for(specs, TASK_RESOURCE_TYPE),
            started=time.monotonic(),
            duration=options.import_seconds(),
        )
        state.tasks[task.task_id] = task
        if token:
            state.tokens[token] = (fingerprint(params), task.task_id)
    return ActionResult(task.described())


def describe_import_snapshot_tasks(self: Any) -> ActionResult:
    """DescribeImportSnapshotTasks (API_DescribeImportSnapshotTasks.html): the tasks by id (an
    unknown id is ``InvalidConversionTaskId``), else all, ``MaxResults`` per page with
    ``NextToken``; the ``task-state`` filter as DescribeImportImageTasks documents it."""
    state = import_state(self.ec2_backend)
    wanted = list(self._get_param("ImportTaskIds") or [])
    filters = self._get_param("Filters") or []
    with state.lock:
        for task_id in wanted:
            if task_id not in state.tasks:
                refuse("InvalidConversionTaskId", f"The import task {task_id} does not exist")
        tasks = [state.tasks[t] for t in wanted] if wanted else list(state.tasks.values())
        for task in tasks:
            settle(task, self.current_account, self.region)
        for f in filters:
            if f.get("Name") == "task-state":
                tasks = [t for t in tasks if t.status in f.get("Values", [])]
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or 1000)
        page = tasks[start : start + size]
        result: dict[str, Any] = {"ImportSnapshotTasks": [t.described() for t in page]}
        if start + size < len(tasks):
            result["NextToken"] = str(start + size)
    return ActionResult(result)


def cancel_import_task(self: Any) -> ActionResult:
    """CancelImportTask (API_CancelImportTask.html): an active task goes ``deleting`` (then
    ``deleted``); a finished one cannot be cancelled (``IncorrectState``)."""
    task_id = self._get_param("ImportTaskId")
    state = import_state(self.ec2_backend)
    with state.lock:
        task = state.tasks.get(task_id)
        if task is None:
            refuse("InvalidConversionTaskId", f"The import task {task_id} does not exist")
        settle(task, self.current_account, self.region)
        if task.status != "active":
            refuse("IncorrectState", f"The import task {task_id} is {task.status}")
        self.error_on_dryrun()
        previous = task.status
        task.status, task.cancelled_at = "deleting", time.monotonic()
        task.message = self._get_param("CancelReason") or "Task canceled by user"
    return ActionResult({"ImportTaskId": task_id, "PreviousState": previous, "State": "deleting"})


def _tag_specifications(specs: Any) -> list[dict[str, Any]]:
    """API_ImportSnapshot.html, TagSpecifications: ResourceType ``import-snapshot-task`` only."""
    specs = [specs] if isinstance(specs, dict) else list(specs or [])
    for spec in specs:
        if spec.get("ResourceType") != TASK_RESOURCE_TYPE:
            refuse(
                "InvalidParameterValue",
                f"'{spec.get('ResourceType')}' is not a valid taggable resource type for this "
                f"operation (ImportSnapshot accepts {TASK_RESOURCE_TYPE})",
            )
    rules.check_tags(tags_for(specs, TASK_RESOURCE_TYPE))
    return list(specs)


HANDLERS = {
    "import_snapshot": import_snapshot,
    "describe_import_snapshot_tasks": describe_import_snapshot_tasks,
    "cancel_import_task": cancel_import_task,
}


def install() -> None:
    from moto.ec2.responses import EC2Response

    for name, handler in HANDLERS.items():
        setattr(EC2Response, name, handler)
