"""The stages in order, per image: upload → register → copies to every region start, and run
while the image is tested → publish, each region as soon as its copy is ready (a failed test
removes the copies instead).

Images of one compose run concurrently, and so do the regions of one image. One image's failure
does not stop the others; the compose ends with a summary event. Every stage is idempotent (it
finds its own earlier result by tags), so re-running a compose finishes what a crashed or partly
failed run left, and a region added to the configuration is filled in by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fedimg import composekind
from fedimg.aws.clients import Clients
from fedimg.aws.image import RegisteredImage
from fedimg.aws.publish import Published, publish_image
from fedimg.aws.replicate import CopyRound, remove_copies
from fedimg.compose import ComposeImage, ComposeInfo, discover
from fedimg.config import Settings
from fedimg.errors import FedimgError
from fedimg.events import Event, Sink, null_sink
from fedimg.identity import ImageIdentity
from fedimg.outcomes import FAILED as FAILED  # re-exported: the test seam's verdicts
from fedimg.outcomes import IMAGE_FAILED, PUBLISHED, TEST_FAILED
from fedimg.outcomes import NEEDS_INSPECTION as NEEDS_INSPECTION
from fedimg.outcomes import PASSED as PASSED
from fedimg.report import TESTCASE_AMI_BOOT, ComposeRef, ImageRef, ResultsReporter, TestReport
from fedimg.upload import UploadOutcome, upload_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSubject:
    """What the test stage is given: a registered AMI, and the image it came from."""

    __test__ = False  # not a pytest class

    identity: ImageIdentity
    ami: str
    region: str
    image: ComposeImage | None = None
    compose: ComposeInfo | None = None


@dataclass(frozen=True)
class TestVerdict:
    __test__ = False  # not a pytest class

    outcome: str  # PASSED | FAILED | NEEDS_INSPECTION (the infrastructure failed, not the image)
    checks: tuple[dict[str, str], ...] = ()  # {"name", "outcome", "output"}
    reason: str = ""
    firmware: str = ""  # bios | uefi: how the machine under test booted; "" when not known


# The test seam: returns a verdict for an AMI. The EC2 boot test is the production tester.
Tester = Callable[[TestSubject], TestVerdict]


def no_test(subject: TestSubject) -> TestVerdict:
    """Used when testing is switched off (``test.enabled = false``)."""
    return TestVerdict(PASSED, reason="tests disabled")


@dataclass
class ImageOutcome:
    image_name: str
    arch: str
    subvariant: str
    status: str = IMAGE_FAILED  # an IMAGE_OUTCOMES value
    base_ami: str = ""
    regions: dict[str, str] = field(default_factory=dict)  # region → AMI id (published ones)
    error: str = ""
    retryable: bool = False
    test: TestVerdict | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "image_name": self.image_name,
            "arch": self.arch,
            "subvariant": self.subvariant,
            "outcome": self.status,
            "regions": dict(sorted(self.regions.items())),
            "error": self.error,
        }


@dataclass
class ComposeOutcome:
    compose_id: str
    release: str
    images: list[ImageOutcome]

    @property
    def ok(self) -> bool:
        return all(i.status == PUBLISHED for i in self.images)

    @property
    def retryable(self) -> bool:
        """A later run may do better: some image failed for a reason that can pass."""
        return any(i.status == IMAGE_FAILED and i.retryable for i in self.images)


@dataclass
class Pipeline:
    settings: Settings
    clients: Clients
    sink: Sink = null_sink
    tester: Tester = no_test
    reporter: ResultsReporter | None = None

    def run_compose(self, location: str) -> ComposeOutcome:
        """Every selected image of the compose at ``location``, published in every region."""
        info, images = discover(location, self.settings.compose)
        log.info("compose %s: %d images to publish", info.compose_id, len(images))
        with ThreadPoolExecutor(self.settings.compose.image_workers) as pool:
            outcomes = list(pool.map(lambda img: self.run_image(img, info), images))
        result = ComposeOutcome(info.compose_id, info.release_version, outcomes)
        self.sink(compose_summary_event(result))
        return result

    def run_image(self, image: ComposeImage, info: ComposeInfo) -> ImageOutcome:
        """The per-image stages: what a worker of the split deployment runs for one image."""
        return self.publish_identity(identity_of(image, info), image.url, image, info)

    def publish_identity(
        self,
        identity: ImageIdentity,
        location: str,
        image: ComposeImage | None = None,
        info: ComposeInfo | None = None,
    ) -> ImageOutcome:
        """One image through every stage; never raises for a stage failure (see the outcome).

        The copies to the other regions start as soon as the base AMI is available and run while
        it is tested; they stay private. Once the test has passed each region is published as
        soon as its copy is available; a failed test has the copies removed; an untested image
        (NEEDS_INSPECTION) leaves them private for the next run to reuse.
        """
        outcome = ImageOutcome(identity.image_name, identity.arch, identity.subvariant)
        emit = _Emitter(self.sink, identity, self.settings.aws.base_region)
        stage = "upload"
        copies: CopyRound | None = None
        origin: dict[str, str] = {}  # a copy event names its source (bus messages need it)
        try:
            emit("upload", "started")
            uploaded = upload_image(location, identity, self.settings, self.clients, sink=self.sink)
            outcome.base_ami = uploaded.ami
            emit("upload", "completed", ami=uploaded.ami, snapshot=uploaded.snapshot)
            base = RegisteredImage(uploaded.ami, uploaded.region, uploaded.name, uploaded.reused)
            origin = {"source_ami": base.ami, "source_region": base.region}

            stage = "copy"
            copies = CopyRound(
                self.settings,
                self.clients,
                identity,
                base,
                self._regions(base),
                lambda region, status, detail: emit.at(region)("copy", status, **detail),
            )
            stage = "test"
            verdict = self._test(identity, uploaded, image, info, emit)
            outcome.test = verdict
            if verdict.outcome == FAILED and self.settings.test.block_publish:
                outcome.status, outcome.error = TEST_FAILED, verdict.reason
                copies.stop()
                stage = "copy"
                removed = remove_copies(self.clients, identity, base, self._regions(base))
                log.info("%s: test failed; removed copies %s", identity.image_name, removed)
                return outcome
            if verdict.outcome == NEEDS_INSPECTION:
                # Never publish what could not be tested; the infrastructure may do better later.
                outcome.error, outcome.retryable = verdict.reason, True
                return outcome

            stage = "publish"
            self._publish_as_copied(identity, base, copies, outcome, emit)
        except FedimgError as e:
            # After a failed test, a removal that failed ends the image as failed: a re-run
            # (retryable) tests again and finishes the removal.
            outcome.status = IMAGE_FAILED
            outcome.error, outcome.retryable = _joined(outcome.error, str(e)), e.retryable
            emit(stage, "failed", error=str(e), **origin)
        except Exception as e:  # a bug must not take the other images down with it
            log.exception("%s: unexpected error in stage %s", identity.image_name, stage)
            outcome.status = IMAGE_FAILED
            outcome.error, outcome.retryable = f"{type(e).__name__}: {e}", False
            emit(stage, "failed", error=outcome.error, **origin)
        finally:
            if copies is not None:
                copies.stop()
        return outcome

    def _regions(self, base: RegisteredImage) -> list[str]:
        """The configured regions; the base region always (its AMI is the image's first)."""
        regions = list(self.settings.aws.regions)
        return regions if base.region in regions else [base.region, *regions]

    def _test(
        self,
        identity: ImageIdentity,
        uploaded: UploadOutcome,
        image: ComposeImage | None,
        info: ComposeInfo | None,
        emit: _Emitter,
    ) -> TestVerdict:
        if not self.settings.test.enabled:
            return no_test(TestSubject(identity, uploaded.ami, uploaded.region))
        emit("test", "started", ami=uploaded.ami, kind="ec2")
        try:
            verdict = self.tester(TestSubject(identity, uploaded.ami, uploaded.region, image, info))
        except FedimgError as e:
            verdict = TestVerdict(NEEDS_INSPECTION, reason=str(e))
        self._report(verdict, uploaded, image, info)
        status = "completed" if verdict.outcome == PASSED else "failed"
        emit(
            "test",
            status,
            ami=uploaded.ami,
            outcome=verdict.outcome,
            checks=list(verdict.checks),
            kind="ec2",
            firmware=verdict.firmware,
            reason=verdict.reason,
        )
        return verdict

    def _report(
        self,
        verdict: TestVerdict,
        uploaded: UploadOutcome,
        image: ComposeImage | None,
        info: ComposeInfo | None,
    ) -> None:
        """ResultsDB knows results about compose images only.

        Reporting never blocks publishing: metadata the report cannot be built from (a key
        productmd made optional, a bug) is logged, like a failed POST inside ``report``.
        """
        if self.reporter is None or not self.reporter.enabled or image is None or info is None:
            return
        try:
            report = TestReport(
                outcome=verdict.outcome,
                testcase=TESTCASE_AMI_BOOT,
                image=ImageRef.from_productmd(image.metadata),
                compose=ComposeRef.from_composeinfo(info.metadata),
                ami=uploaded.ami,
                region=uploaded.region,
                firmware=verdict.firmware,
                note=verdict.reason,
            )
        except Exception:
            log.exception("%s: no ResultsDB report of %s", image.image_name, uploaded.ami)
            return
        self.reporter.report(report)

    def _publish_as_copied(
        self,
        identity: ImageIdentity,
        base: RegisteredImage,
        copies: CopyRound,
        outcome: ImageOutcome,
        emit: _Emitter,
    ) -> None:
        """The base region at once, every other region as soon as its copy is available."""
        emit("publish", "started", ami=base.ami)
        errors: dict[str, FedimgError] = {}

        workers = max(1, min(len(copies.copies) + 1, self.settings.aws.copy_workers))
        with ThreadPoolExecutor(workers) as pool:

            def publish(region: str, ami: str) -> tuple[str, str, Future[Published]]:
                future = pool.submit(
                    publish_image, self.settings, self.clients, identity, region, ami
                )
                return region, ami, future

            published = [publish(base.region, base.ami)]
            for region, copy in copies.as_they_end():
                if isinstance(copy, FedimgError):
                    errors[region] = copy
                else:
                    published.append(publish(region, copy.ami))
            for region, ami, future in published:
                try:
                    future.result()
                    outcome.regions[region] = ami
                except FedimgError as e:
                    errors[region] = e
        if errors:
            outcome.error = "; ".join(f"{r}: {e}" for r, e in sorted(errors.items()))
            outcome.retryable = any(e.retryable for e in errors.values())
            emit("publish", "failed", regions=outcome.regions, error=outcome.error)
            return
        outcome.status = PUBLISHED
        emit("publish", "completed", regions=outcome.regions, public=self.settings.publish.public)


def _joined(*errors: str) -> str:
    return "; ".join(e for e in errors if e)


def identity_of(image: ComposeImage, info: ComposeInfo) -> ImageIdentity:
    """The identity every stage finds an image's earlier work by."""
    return ImageIdentity(
        image_name=image.image_name,
        arch=image.arch,
        sha256=image.sha256,
        compose_id=info.compose_id,
        release=info.release_version,
        subvariant=image.subvariant,
        url=image.url,
        compose_kind=composekind.classify(
            info.compose_id,
            compose_type=info.compose_type,
            label=info.label,
            release_version=info.release_version,
        ).value,
    )


def compose_summary_event(result: ComposeOutcome) -> Event:
    """The ``fedimg.compose.complete`` event: built from the image outcomes alone, so that a
    worker deriving them from AWS's records announces what one process would have."""
    return Event(
        "compose",
        "completed",
        detail={
            "compose_id": result.compose_id,
            "release": result.release,
            "images": [o.summary() for o in result.images],
        },
    )


class _Emitter:
    """Events for one image, with the detail every event carries."""

    def __init__(self, sink: Sink, identity: ImageIdentity, region: str) -> None:
        self.sink, self.identity, self.region = sink, identity, region

    def at(self, region: str) -> _Emitter:
        return _Emitter(self.sink, self.identity, region)

    def __call__(self, stage: str, status: str, **detail: Any) -> None:
        i = self.identity
        base = {
            "compose_id": i.compose_id,
            "image_name": i.image_name,
            "image_url": i.url,
            "arch": i.arch,
            "subvariant": i.subvariant,
            "release": i.release,
        }
        region = "" if stage == "publish" else self.region
        self.sink(Event(stage, status, i.image_name, region, base | detail))
