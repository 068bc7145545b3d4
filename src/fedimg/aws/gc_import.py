"""``fedimg gc``'s part for the S3 + ImportSnapshot upload method: what killed runs left in the
staging bucket and in VM Import, in the base region, when ``upload.bucket`` is configured.

A leftover is:

- an import task of fedimg's (``fedimg:managed=true`` in its tags) still ``active`` after
  ``upload.deadline_seconds`` since its object was staged: the run that started it cancels its
  own task at that bound, so nobody still waits for it. (DescribeImportSnapshotTasks gives a task
  no timestamps; the object's LastModified is when staging ended, just before ImportSnapshot. A
  task whose object is gone has no known age and is left alone.) A live run cancels its own
  task after ``upload.stall_seconds`` without progress;
- an object under ``upload.prefix`` carrying fedimg's metadata (``fedimg-image-key``), older than
  the bound below and read by no import task gc keeps;
- a multipart upload under ``upload.prefix`` initiated longer ago than the bound below (a later
  run of the image resumes it until then).

The bound is ``upload.deadline_seconds`` plus gc's grace period: an import may read its object
for that long after staging, and a run killed mid-upload is resumed well within it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import Clients, error_code, translate
from fedimg.aws.s3stage import META_KEY
from fedimg.config import Settings
from fedimg.identity import TAG_MANAGED, tags_of

log = logging.getLogger(__name__)

IMPORT_TASK, MULTIPART_UPLOAD, S3_OBJECT = "import-task", "multipart-upload", "s3-object"
# Removal order: a task is cancelled before the object it reads is deleted.
KINDS = (IMPORT_TASK, MULTIPART_UPLOAD, S3_OBJECT)
UPLOAD_ID = "?uploadId="  # a multipart upload's resource id: <key>?uploadId=<id>
GONE_CODES = frozenset({"NoSuchKey", "NoSuchUpload", "404", "NotFound"})
# (kind, resource id, reason, since when) of one leftover.
Leftover = tuple[str, str, str, datetime]


class ImportScan:
    """The base region's import leftovers, read once."""

    def __init__(
        self, settings: Settings, clients: Clients, now: datetime, grace: timedelta
    ) -> None:
        upload = settings.upload
        self.region = settings.aws.base_region
        self.ec2 = clients.ec2(self.region)
        self.s3 = clients.s3(self.region)
        self.bucket, self.prefix = upload.bucket, upload.prefix
        self.now = now
        self.deadline = timedelta(seconds=upload.deadline_seconds)
        self.bound = self.deadline + grace

    def leftovers(self) -> list[Leftover]:
        objects = self._objects()
        staged = {key: modified for key, modified in objects}
        stale_tasks, kept_keys = self._tasks(staged)
        found = list(stale_tasks)
        for key, modified in objects:
            if key in kept_keys or self.now - modified <= self.bound:
                continue
            if self._is_fedimgs(key):
                reason = f"staged image {_hours(self.now - modified)} old"
                found.append((S3_OBJECT, key, reason, modified))
        for upload in self._uploads():
            started = upload["Initiated"]
            if self.now - started > self.bound:
                rid = f"{upload['Key']}{UPLOAD_ID}{upload['UploadId']}"
                reason = f"multipart upload unfinished after {_hours(self.now - started)}"
                found.append((MULTIPART_UPLOAD, rid, reason, started))
        return found

    def _objects(self) -> list[tuple[str, datetime]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return [(o["Key"], o["LastModified"]) for page in pages for o in page.get("Contents", [])]

    def _uploads(self) -> list[dict[str, Any]]:
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        return [u for page in pages for u in page.get("Uploads", [])]

    def _is_fedimgs(self, key: str) -> bool:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if error_code(e) in GONE_CODES:
                return False
            raise
        return META_KEY in head.get("Metadata", {})

    def _tasks(self, staged: dict[str, datetime]) -> tuple[list[Leftover], set[str]]:
        """Stale active tasks of fedimg's, and the keys of this bucket the other active tasks
        read."""
        stale: list[Leftover] = []
        kept: set[str] = set()
        pages = self.ec2.get_paginator("describe_import_snapshot_tasks").paginate()
        for task in (t for page in pages for t in page.get("ImportSnapshotTasks", [])):
            detail = task.get("SnapshotTaskDetail", {})
            if detail.get("Status") != "active":
                continue
            source = detail.get("UserBucket", {})
            key = source.get("S3Key", "") if source.get("S3Bucket") == self.bucket else ""
            modified = staged.get(key)
            mine = tags_of(task).get(TAG_MANAGED) == "true"
            if mine and modified is not None and self.now - modified > self.deadline:
                age = _hours(self.now - modified)
                progress = detail.get("Progress", "?")
                reason = f"import still active {age} after staging (at {progress}%)"
                stale.append((IMPORT_TASK, task["ImportTaskId"], reason, modified))
            elif key:
                kept.add(key)
        return stale, kept


def remove_leftover(settings: Settings, clients: Clients, kind: str, resource_id: str) -> None:
    """Cancels, aborts or deletes one leftover; "already gone" counts as done. Raises AwsError."""
    region, bucket = settings.aws.base_region, settings.upload.bucket
    s3 = clients.s3(region)
    actions: dict[str, Callable[[], object]] = {
        IMPORT_TASK: lambda: clients.ec2(region).cancel_import_task(
            ImportTaskId=resource_id, CancelReason="fedimg gc: past the import deadline"
        ),
        MULTIPART_UPLOAD: lambda: s3.abort_multipart_upload(
            Bucket=bucket,
            Key=resource_id.split(UPLOAD_ID)[0],
            UploadId=resource_id.split(UPLOAD_ID)[1],
        ),
        S3_OBJECT: lambda: s3.delete_object(Bucket=bucket, Key=resource_id),
    }
    try:
        actions[kind]()
    except ClientError as e:
        if error_code(e) in GONE_CODES or error_code(e).endswith(".NotFound"):
            return
        raise translate(e, f"removing {kind} {resource_id}") from e
    except BotoCoreError as e:
        raise translate(e, f"removing {kind} {resource_id}") from e


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
