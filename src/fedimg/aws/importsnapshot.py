"""The image becomes an EBS snapshot through S3 and ImportSnapshot (``upload.method =
"import-snapshot"``), behind the same contract as EBS direct: a completed snapshot tagged
``fedimg:state=uploaded`` for this image, reused by every later run.

Steps, each found again by a later run (so a run killed anywhere resumes without a second import):

1. A snapshot of this image tagged ``uploaded`` → reused (a staged object left behind is deleted).
2. An import task of this image (DescribeImportSnapshotTasks lists the last 7 days' tasks; ours
   carry ``fedimg:image-key`` from ImportSnapshot's TagSpecifications): an ``active`` one is
   followed, a ``completed`` one's snapshot is tagged and used. Nothing is uploaded.
3. Otherwise the image is staged in ``s3://bucket/prefix…`` (s3stage.py: reused if complete, a
   multipart upload continued) and ImportSnapshot is called (Format RAW, the configured role) with
   a ClientToken derived from the image key, the role and the ids of this image's tasks that died
   (``deleted``): every run sends the same request and AWS answers all of them with one task; a
   dead task's token leads to the next token, the same for every run.
4. The task is followed under two bounds: ``upload.deadline_seconds`` overall, and
   ``upload.stall_seconds`` without any change of status, message or progress. A task past either
   is cancelled (CancelImportTask) and reported, never waited on forever.
5. The snapshot is tagged ``uploaded`` with the image's tags, and the S3 object is deleted. After a
   failure the object is deleted too, unless an import task may still be reading it; a killed run
   leaves it for the next run, and ``fedimg gc`` finds what nobody came back for.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.s3stage import delete_object_quietly, object_key, stage_image
from fedimg.aws.snapshot import GIB, STATE_UPLOADED, SnapshotResult, earlier_snapshots
from fedimg.aws.wait import wait_until
from fedimg.config import Settings
from fedimg.errors import AwsError, FedimgError, TransientError
from fedimg.events import Event, Sink, null_sink
from fedimg.identity import TAG_KEY, TAG_STATE, ImageIdentity, tag_list, tags_of
from fedimg.source import ImageSource

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

TAG_IMPORT_TASK = "fedimg:import-task"
STATE_IMPORTING = "importing"
TASK_RESOURCE_TYPE = "import-snapshot-task"
DEAD_TASK_STATES = ("deleting", "deleted")
MAX_DEAD_IN_CHAIN = 16
FIRST_POLL = 0.05
MAX_POLL = 15.0


def import_snapshot_if_not_exists(
    source: ImageSource,
    identity: ImageIdentity,
    settings: Settings,
    clients: Clients,
    sink: Sink = null_sink,
) -> SnapshotResult:
    """A completed snapshot of the image, by S3 and ImportSnapshot unless one exists or is under
    way (see the module docstring)."""
    if not identity.complete:
        raise FedimgError(f"{identity.image_name}: the image's checksum is needed to upload it")
    run = _Import(source, identity, settings, clients, sink)
    try:
        return run.run()
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"import of {identity.image_name}") from e


class _Import:
    def __init__(
        self,
        source: ImageSource,
        identity: ImageIdentity,
        settings: Settings,
        clients: Clients,
        sink: Sink,
    ) -> None:
        self.source, self.identity, self.settings, self.sink = source, identity, settings, sink
        self.region = settings.aws.base_region
        self.ec2 = clients.ec2(self.region)
        self.s3 = clients.s3(self.region)
        self.bucket = settings.upload.bucket
        self.key = object_key(settings.upload.prefix, identity)
        self.started = time.monotonic()
        self.task_may_read = False  # an import task may still read the object: keep it

    @property
    def name(self) -> str:
        return self.identity.image_name

    def run(self) -> SnapshotResult:
        for snap in earlier_snapshots(self.ec2, self.identity):
            if tags_of(snap).get(TAG_STATE) == STATE_UPLOADED and snap.get("State") == "completed":
                log.info("%s: reusing snapshot %s", self.name, snap["SnapshotId"])
                delete_object_quietly(self.s3, self.bucket, self.key)
                gib = int(snap.get("VolumeSize", 0))
                return SnapshotResult(snap["SnapshotId"], self.region, gib, 0, 0, 0, 0, 0.0, True)
        try:
            task = self._task_of_image()
            if task is None:
                staged = stage_image(
                    self.s3,
                    self.bucket,
                    self.key,
                    self.source,
                    self.identity,
                    self.settings.aws.upload_workers,
                )
                self._emit("staged", {"bytes_sent": staged.bytes_sent, "reused": staged.reused})
                task = self._start_import()
            else:
                log.info("%s: following import task %s", self.name, task["ImportTaskId"])
            self.task_may_read = True
            snapshot_id = self._follow(task)
            self.task_may_read = False
            gib = self._finish(snapshot_id, task["ImportTaskId"])
        except Exception as e:
            if not self.task_may_read:
                delete_object_quietly(self.s3, self.bucket, self.key)
            if isinstance(e, (ClientError, BotoCoreError)):
                raise translate(e, f"import of {self.name}") from e
            raise
        delete_object_quietly(self.s3, self.bucket, self.key)
        return SnapshotResult(
            snapshot_id,
            self.region,
            gib,
            0,
            0,
            self.source.bytes_read,
            self.source.raw_bytes,
            time.monotonic() - self.started,
            reused=False,
        )

    # --- tasks ------------------------------------------------------------------------------

    def _tasks(self) -> list[dict[str, Any]]:
        """This image's import tasks that AWS still lists."""
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            page = (
                self.ec2.describe_import_snapshot_tasks(NextToken=token)
                if token
                else self.ec2.describe_import_snapshot_tasks()
            )
            found += [
                dict(t)
                for t in page.get("ImportSnapshotTasks", [])
                if tags_of(t).get(TAG_KEY) == self.identity.key
            ]
            token = page.get("NextToken", "")
            if not token:
                return found

    def _task_of_image(self) -> dict[str, Any] | None:
        """An active task of this image, else a completed one whose snapshot still exists."""
        tasks = self._tasks()
        for t in tasks:
            if _status(t) == "active":
                return t
        for t in tasks:
            detail = t.get("SnapshotTaskDetail", {})
            if _status(t) == "completed" and self._snapshot_exists(detail.get("SnapshotId", "")):
                return t
        return None

    def _snapshot_exists(self, snapshot_id: str) -> bool:
        if not snapshot_id:
            return False
        try:
            return bool(self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"])
        except ClientError as e:
            if error_code(e).endswith(".NotFound"):
                return False
            raise

    def _start_import(self) -> dict[str, Any]:
        """ImportSnapshot with the chain's first live token (see the module docstring)."""
        role = self.settings.upload.role
        dead: list[str] = []
        while len(dead) <= MAX_DEAD_IN_CHAIN:
            token = import_token(self.identity, role, dead)
            task: dict[str, Any] = dict(
                self.ec2.import_snapshot(
                    ClientToken=token,
                    Description=f"fedimg import of {self.name}",
                    DiskContainer={
                        "Description": self.name,
                        "Format": "RAW",
                        "UserBucket": {"S3Bucket": self.bucket, "S3Key": self.key},
                    },
                    RoleName=role,
                    # Only what every run of this image sends alike: the token is refused with
                    # other parameters (IdempotentParameterMismatch).
                    TagSpecifications=[
                        {  # type: ignore[misc,list-item]
                            "ResourceType": TASK_RESOURCE_TYPE,
                            "Tags": tag_list(
                                self.identity.content_tags() | {TAG_STATE: STATE_IMPORTING}
                            ),
                        }
                    ],
                )
            )
            if _status(task) not in DEAD_TASK_STATES:
                log.info("%s: import task %s", self.name, task["ImportTaskId"])
                return task
            log.info(
                "%s: import task %s of this image died; next token", self.name, task["ImportTaskId"]
            )
            dead.append(task["ImportTaskId"])
        raise AwsError(f"{self.name}: {len(dead)} dead import tasks in a row", retryable=False)

    def _follow(self, task: dict[str, Any]) -> str:
        """Polls the task to ``completed`` and returns its snapshot id; cancels and raises when
        it stalls or passes the deadline, raises when AWS gives up on it."""
        task_id = task["ImportTaskId"]
        upload = self.settings.upload
        end = time.monotonic() + upload.deadline_seconds
        seen: tuple[str, str, str] = ("", "", "")
        changed = time.monotonic()
        pause = FIRST_POLL
        while True:
            detail = self._detail(task_id)
            status = str(detail.get("Status", ""))
            message = str(detail.get("StatusMessage", ""))
            progress = str(detail.get("Progress", ""))
            if status == "completed" and detail.get("SnapshotId"):
                return str(detail["SnapshotId"])
            if status in DEAD_TASK_STATES:
                self.task_may_read = False
                raise AwsError(
                    f"{self.name}: import task {task_id} failed: {message or status}",
                    # AWS's "ClientError: …" messages blame the disk or the request.
                    retryable=not message.startswith("ClientError"),
                )
            now = time.monotonic()
            if (status, message, progress) != seen:
                seen, changed = (status, message, progress), now
                self._emit("progress", {"task": task_id, "status": message, "progress": progress})
            elif now - changed > upload.stall_seconds:
                self._cancel(task_id, f"no progress for {upload.stall_seconds} s")
                raise TransientError(
                    f"{self.name}: import task {task_id} made no progress for "
                    f"{upload.stall_seconds} s (at {progress or '?'}%, {message or status}); "
                    "cancelled"
                )
            if now > end:
                self._cancel(task_id, f"not done after {upload.deadline_seconds} s")
                raise TransientError(
                    f"{self.name}: import task {task_id} not done after "
                    f"{upload.deadline_seconds} s (at {progress or '?'}%); cancelled"
                )
            time.sleep(min(pause, max(0.0, end - now)))
            pause = min(pause * 2, MAX_POLL)

    def _detail(self, task_id: str) -> dict[str, Any]:
        tasks = self.ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])
        found = tasks.get("ImportSnapshotTasks", [])
        return dict(found[0].get("SnapshotTaskDetail", {})) if found else {}

    def _cancel(self, task_id: str, reason: str) -> None:
        """CancelImportTask; a task that finished meanwhile cannot be, which is fine."""
        try:
            self.ec2.cancel_import_task(ImportTaskId=task_id, CancelReason=f"fedimg: {reason}")
            log.warning("%s: cancelled import task %s: %s", self.name, task_id, reason)
            self.task_may_read = False
        except ClientError as e:
            log.warning("%s: could not cancel import task %s: %s", self.name, task_id, e)

    def _finish(self, snapshot_id: str, task_id: str) -> int:
        """Waits for the snapshot, tags it as this image's; returns its size in GiB."""
        wait_until(
            f"snapshot {snapshot_id}",
            lambda: _snapshot_state(self.ec2, snapshot_id),
            done="completed",
            failed=("error",),
            deadline_s=self.settings.aws.wait_seconds,
        )
        tags = self.identity.tags(self.settings.image.tags) | {
            TAG_STATE: STATE_UPLOADED,
            TAG_IMPORT_TASK: task_id,
        }
        self.ec2.create_tags(Resources=[snapshot_id], Tags=tag_list(tags))
        snaps = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        size = int(snaps[0].get("VolumeSize", 0)) if snaps else 0
        log.info("%s: imported snapshot %s", self.name, snapshot_id)
        return size or max(1, math.ceil(self.source.raw_size / GIB))

    def _emit(self, what: str, detail: dict[str, Any]) -> None:
        self.sink(Event("upload", "progress", self.name, self.region, {"import": what} | detail))


def import_token(identity: ImageIdentity, role: str, dead: list[str]) -> str:
    """The same for every run of this image until one of its tasks dies; 64 characters."""
    text = f"{identity.key}/import-snapshot/{role}/{','.join(dead)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _status(task: dict[str, Any]) -> str:
    return str(task.get("SnapshotTaskDetail", {}).get("Status", ""))


def _snapshot_state(ec2: EC2Client, snapshot_id: str) -> str:
    snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return str(snaps[0].get("State", "")) if snaps else ""
