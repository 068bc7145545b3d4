"""The decompressed raw image into one S3 object by multipart upload: no temporary file.

The image's 512 KiB blocks (source.py; all-zero ones are skipped there) are put back into the
raw byte stream and cut into parts of ``part_size`` bytes. A few threads send the parts; the
queue bound keeps at most ``2 x workers`` parts in memory. Every part carries its SHA-256
(ChecksumAlgorithm SHA256), which S3 checks on arrival and keeps per part.

**Resume.** The object's key is the image's (``object_key``), so a later run finds an earlier
one's multipart upload (ListMultipartUploads) and its parts (ListParts): a part whose checksum
(or, when S3 kept none, its MD5 ETag) and size match the one computed now is not sent again. The
last part is produced only after the source verified the file's checksum, so an object only ever
completes with the published content; its metadata names the image key and the raw size, by which
a later run reuses it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedimg.aws.clients import error_code, translate
from fedimg.errors import FedimgError
from fedimg.identity import ImageIdentity
from fedimg.source import BLOCK_SIZE, ImageSource

# The S3 stubs are not installed with the others: S3 clients are typed loosely.
S3Client = Any

log = logging.getLogger(__name__)

MIB = 1024**2
MIN_PART_SIZE = 8 * MIB  # S3 needs 5 MiB but for the last part; fewer, larger requests
MAX_PARTS = 10000  # S3's limit per multipart upload
MAX_PART_WORKERS = 8  # parts in flight: memory is about 2 x this x part_size
META_KEY = "fedimg-image-key"
META_RAW_BYTES = "fedimg-raw-bytes"


def object_key(prefix: str, identity: ImageIdentity) -> str:
    """The same for every run of this image (the key names the content)."""
    return f"{prefix}{identity.image_name}-{identity.key}.raw"


def part_size(raw_size: int) -> int:
    """At least MIN_PART_SIZE, a whole number of blocks, and few enough parts for S3."""
    needed = math.ceil(raw_size / MAX_PARTS)
    return max(MIN_PART_SIZE, math.ceil(needed / BLOCK_SIZE) * BLOCK_SIZE)


def raw_parts(source: ImageSource, size: int) -> Iterator[bytes]:
    """The raw image, zeros and all, in pieces of ``size`` bytes (the last one shorter)."""
    total = source.raw_size
    buf = bytearray()
    offset = 0  # bytes of the raw stream produced so far (yielded or in buf)

    def fill_zeros(upto: int) -> Iterator[bytes]:
        nonlocal offset, buf
        while offset < upto:
            take = min(upto - offset, size - len(buf))
            buf += bytes(take)
            offset += take
            if len(buf) == size:
                yield bytes(buf)
                buf = bytearray()

    for block in source.blocks():
        yield from fill_zeros(block.index * BLOCK_SIZE)
        data = memoryview(block.data)[: max(0, total - offset)]
        while len(data):
            take = min(len(data), size - len(buf))
            buf += data[:take]
            data = data[take:]
            offset += take
            if len(buf) == size:
                yield bytes(buf)
                buf = bytearray()
    yield from fill_zeros(total)
    if buf:
        yield bytes(buf)


@dataclass(frozen=True)
class StagedObject:
    bucket: str
    key: str
    parts_sent: int
    parts_reused: int
    bytes_sent: int
    reused: bool


def existing_object(s3: S3Client, bucket: str, key: str, identity: ImageIdentity) -> int | None:
    """The size of a completed object of this image at ``key``, else None."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if error_code(e) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    if head.get("Metadata", {}).get(META_KEY) != identity.key:
        return None
    return int(head["ContentLength"])


def delete_object_quietly(s3: S3Client, bucket: str, key: str) -> None:
    """Clean-up that never hides the original error (``fedimg gc`` finds what it misses)."""
    try:
        s3.delete_object(Bucket=bucket, Key=key)
        log.info("deleted s3://%s/%s", bucket, key)
    except (ClientError, BotoCoreError) as e:
        log.warning("could not delete s3://%s/%s (fedimg gc will): %s", bucket, key, e)


def stage_image(
    s3: S3Client, bucket: str, key: str, source: ImageSource, identity: ImageIdentity, workers: int
) -> StagedObject:
    """The image as ``s3://bucket/key``: reused when complete, else uploaded or resumed."""
    try:
        size = existing_object(s3, bucket, key, identity)
        if size == source.raw_size:
            log.info("%s: reusing s3://%s/%s", identity.image_name, bucket, key)
            return StagedObject(bucket, key, 0, 0, 0, reused=True)
        if size is not None:
            delete_object_quietly(s3, bucket, key)  # not this image's bytes after all
        return _Multipart(s3, bucket, key, identity, workers).run(source)
    except (ClientError, BotoCoreError) as e:
        raise translate(e, f"s3://{bucket}/{key}") from e


class _Multipart:
    def __init__(
        self, s3: S3Client, bucket: str, key: str, identity: ImageIdentity, workers: int
    ) -> None:
        self.s3, self.bucket, self.key, self.identity = s3, bucket, key, identity
        self.workers = max(1, min(workers, MAX_PART_WORKERS))
        self.done: dict[int, dict[str, Any]] = {}
        self.sent = self.reused = self.bytes_sent = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self, source: ImageSource) -> StagedObject:
        upload_id, earlier = self._upload_id(source.raw_size)
        size = part_size(source.raw_size)
        work: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=self.workers)
        threads = [
            threading.Thread(target=self._work, args=(work, upload_id), daemon=True)
            for _ in range(self.workers)
        ]
        for t in threads:
            t.start()
        try:
            for number, data in enumerate(raw_parts(source, size), start=1):
                if self.error is not None:
                    break
                kept = earlier.get(number)
                if kept is not None and _same_part(kept, data):
                    self._record(number, kept, reused=True)
                    continue
                work.put((number, data))
        except FedimgError as e:
            if not e.retryable:  # the image is bad: no later run continues this upload
                self._abort_quietly(upload_id)
            raise
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
        if self.error is not None:
            raise self.error
        parts = [self.done[n] for n in sorted(self.done)]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        log.info(
            "%s: s3://%s/%s (%d parts sent, %d kept)",
            self.identity.image_name,
            self.bucket,
            self.key,
            self.sent,
            self.reused,
        )
        return StagedObject(
            self.bucket, self.key, self.sent, self.reused, self.bytes_sent, reused=False
        )

    def _upload_id(self, raw_size: int) -> tuple[str, dict[int, dict[str, Any]]]:
        """An earlier run's multipart upload of this key and its parts, else a new upload."""
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.key)
        mine = sorted(
            (u for u in uploads.get("Uploads", []) if u.get("Key") == self.key),
            key=lambda u: str(u.get("Initiated", "")),
        )
        if mine:
            upload_id = mine[-1]["UploadId"]
            for older in mine[:-1]:  # only one is continued; the rest would be billed forever
                self._abort_quietly(older["UploadId"])
            parts = self._parts(upload_id)
            log.info("%s: resuming upload with %d parts", self.identity.image_name, len(parts))
            return upload_id, parts
        created = self.s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            ChecksumAlgorithm="SHA256",
            Metadata={META_KEY: self.identity.key, META_RAW_BYTES: str(raw_size)},
        )
        return created["UploadId"], {}

    def _parts(self, upload_id: str) -> dict[int, dict[str, Any]]:
        parts: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            page = self.s3.list_parts(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumberMarker=marker
            )
            for p in page.get("Parts", []):
                parts[int(p["PartNumber"])] = dict(p)
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _abort_quietly(self, upload_id: str) -> None:
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not abort an upload of s3://%s/%s: %s", self.bucket, self.key, e)

    def _work(self, work: queue.Queue[tuple[int, bytes] | None], upload_id: str) -> None:
        while (item := work.get()) is not None:
            if self.error is not None:
                continue  # drain without sending
            number, data = item
            try:
                checksum = _sha256_b64(data)
                answer = self.s3.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )
                part = {"ETag": answer["ETag"], "ChecksumSHA256": checksum}
                self._record(number, part, reused=False, size=len(data))
            except (ClientError, BotoCoreError) as e:
                self.error = self.error or translate(e, f"UploadPart {self.key}#{number}")
            except BaseException as e:
                self.error = self.error or e

    def _record(self, number: int, part: dict[str, Any], *, reused: bool, size: int = 0) -> None:
        entry = {"PartNumber": number, "ETag": part["ETag"]}
        if part.get("ChecksumSHA256"):
            entry["ChecksumSHA256"] = part["ChecksumSHA256"]
        with self.lock:
            self.done[number] = entry
            if reused:
                self.reused += 1
            else:
                self.sent += 1
                self.bytes_sent += size


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _same_part(kept: dict[str, Any], data: bytes) -> bool:
    """Whether an uploaded part holds ``data``: by its SHA-256 when S3 kept one, else by its ETag
    (the MD5 of the part's bytes for objects without SSE-KMS)."""
    if int(kept.get("Size", -1)) != len(data):
        return False
    if kept.get("ChecksumSHA256"):
        return bool(kept["ChecksumSHA256"] == _sha256_b64(data))
    etag = str(kept.get("ETag", "")).strip('"')
    return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
