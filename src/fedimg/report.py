"""Test results to ResultsDB, and back out for ``fedimg results COMPOSE_ID``.

A result follows the ``resultsdb-conventions`` for a productmd image (item = the image's file
name, type = ``compose``, ``productmd.compose.*`` and ``productmd.image.*`` data, compose and
image groups, source ``fedimg``). There is no convention for AMIs yet, so fedimg adds the data
keys ``ami``, ``region``, ``architecture`` and ``firmware``.

Reporting never blocks publishing: :meth:`ResultsReporter.report` logs and returns False on any
failure, it never raises.

One retry layer. ``resultsdb_api`` retries POSTs on 5xx inside urllib3, and a POST that the server
committed before failing is then stored twice. fedimg turns that layer off (its adapter does no
retries) and retries in :meth:`ResultsReporter.report` instead, where each report carries a random
``fedimg.report_id`` data value: before posting again it asks ResultsDB whether that id is already
stored, so a retry never duplicates a result. Budget: ``resultsdb.attempts`` POSTs and a check
before each retry, each request at most :data:`REQUEST_TIMEOUT` seconds, with backoff 2, 4, 8 … s
(capped at 30 s) between attempts: under a minute for the default 3 attempts against a server
that never answers, and at once when connections are refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import productmd.composeinfo
import requests
from requests.adapters import HTTPAdapter
from resultsdb_api import ResultsDBapi, ResultsDBapiException, ResultsDBAuth
from resultsdb_conventions.prodmd import ProductmdImageResult
from rich.console import Console
from rich.table import Table
from urllib3.util.retry import Retry

from fedimg.config import ResultsDBSettings
from fedimg.errors import InputError, TransientError
from fedimg.events import Event, Sink
from fedimg.outcomes import FAILED, NEEDS_INSPECTION, PASSED, TEST_OUTCOMES

log = logging.getLogger(__name__)

# The EC2 boot test: a test instance of the AMI boots and its checks pass.
TESTCASE_AMI_BOOT = "fedimg.ami.boot"
# The local boot test: the image boots under QEMU on the fedimg host (Autocloud style).
TESTCASE_LOCAL_BOOT = "fedimg.image.localboot"
OUTCOMES = TEST_OUTCOMES  # kept under this name: importers of fedimg.report use it
SOURCE = "fedimg"
# Data key that makes retries idempotent (see the module docstring).
REPORT_ID_KEY = "fedimg.report_id"
# Seconds for one HTTP request; resultsdb_api sets none, so without this a request can hang.
REQUEST_TIMEOUT = 10.0
BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0
# A compose has a few dozen fedimg results; this bounds a runaway listing.
MAX_PAGES = 50
PAGE_SIZE = 100
# Status codes worth another POST; every other error (400, 401, 403, 404 …) will not change.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ImageRef:
    """The productmd image entry (from ``images.json``) that a result is about."""

    path: str
    arch: str
    subvariant: str
    type: str
    format: str
    disc_number: int = 1
    size: int = 0
    checksums: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_productmd(cls, image: Mapping[str, Any]) -> ImageRef:
        """From a productmd image dict; keys not needed here (mtime, volume_id …) are ignored."""
        return cls(
            path=str(image["path"]),
            arch=str(image["arch"]),
            subvariant=str(image.get("subvariant") or ""),
            type=str(image["type"]),
            format=str(image["format"]),
            disc_number=int(image.get("disc_number") or 1),
            size=int(image.get("size") or 0),
            checksums=dict(image.get("checksums") or {}),
        )

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def as_productmd(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "arch": self.arch,
            "subvariant": self.subvariant,
            "type": self.type,
            "format": self.format,
            "disc_number": self.disc_number,
            "size": self.size,
            "checksums": dict(self.checksums),
        }


@dataclass(frozen=True)
class ComposeRef:
    """The compose a result belongs to: what productmd's ``composeinfo.json`` says about it."""

    id: str
    date: str
    # productmd compose type: production, nightly, test, ci
    type: str
    respin: int
    release_name: str
    release_short: str
    release_version: str

    @classmethod
    def from_composeinfo(cls, composeinfo: Mapping[str, Any]) -> ComposeRef:
        compose = composeinfo["payload"]["compose"]
        release = composeinfo["payload"]["release"]
        return cls(
            id=str(compose["id"]),
            date=str(compose["date"]),
            type=str(compose["type"]),
            respin=int(compose["respin"]),
            release_name=str(release["name"]),
            release_short=str(release["short"]),
            release_version=str(release["version"]),
        )

    @classmethod
    def from_id(cls, compose_id: str, release_name: str = "Fedora") -> ComposeRef:
        """From an id such as ``Fedora-Cloud-41-20241020.0``, when composeinfo is not at hand.

        Raises InputError for an id without the date, type and respin productmd expects.
        """
        try:
            date, compose_type, respin = productmd.composeinfo.get_date_type_respin(compose_id)
        except ValueError as e:  # productmd: an unknown compose type suffix
            raise InputError(f"compose id {compose_id!r}: {e}") from None
        if date is None:
            raise InputError(f"compose id {compose_id!r} has no date")
        # {short}-{version}-{date}…: the short name may itself contain dashes.
        release_id = compose_id[: compose_id.index(date)].rstrip("-")
        short, _, version = release_id.rpartition("-")
        return cls(
            id=compose_id,
            date=date,
            type=compose_type,
            respin=respin,
            release_name=release_name,
            release_short=short or release_id,
            release_version=version if short else "",
        )

    def as_composeinfo(self) -> dict[str, Any]:
        return {
            "header": {"type": "productmd.composeinfo", "version": "1.2"},
            "payload": {
                "compose": {
                    "id": self.id,
                    "date": self.date,
                    "type": self.type,
                    "respin": self.respin,
                },
                "release": {
                    "name": self.release_name,
                    "short": self.release_short,
                    "version": self.release_version,
                },
            },
        }


@dataclass(frozen=True)
class TestReport:
    """One test result about one image (and, for EC2 tests, one AMI in one region)."""

    __test__ = False  # not a pytest test class

    outcome: str
    testcase: str
    image: ImageRef
    compose: ComposeRef
    ami: str = ""
    region: str = ""
    # legacy-bios / uefi: the boot mode the test ran with
    firmware: str = ""
    # The architecture the test ran (a local boot: read from the image); "" means the image's
    # productmd arch. Reported under ``architecture`` as Fedora names it: x86_64, aarch64.
    arch: str = ""
    note: str = ""
    ref_url: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise InputError(f"outcome {self.outcome!r}: must be one of {', '.join(OUTCOMES)}")
        if not self.testcase:
            raise InputError("testcase: must not be empty")


# --- posting ----------------------------------------------------------------------------------


class _TimeoutAdapter(HTTPAdapter):
    """Supplies a timeout to every request (resultsdb_api sets none)."""

    def __init__(self, timeout: float, max_retries: Retry | int = 0) -> None:
        super().__init__(max_retries=max_retries)
        self._timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(
            request,
            stream=stream,
            timeout=timeout if timeout is not None else self._timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


def _client(url: str, adapter: HTTPAdapter, auth: requests.auth.AuthBase | None = None) -> Any:
    # max_retries=0 and then our own adapter: the client's built-in retrying adapter is replaced.
    api = ResultsDBapi(url, max_retries=0, request_auth=auth)
    api.session.mount("http://", adapter)
    api.session.mount("https://", adapter)
    return api


class ResultsReporter:
    """Posts :class:`TestReport` results to ResultsDB; safe to share between threads."""

    def __init__(
        self,
        settings: ResultsDBSettings,
        *,
        timeout: float = REQUEST_TIMEOUT,
        backoff_seconds: float = BACKOFF_SECONDS,
    ) -> None:
        self._settings = settings
        self._timeout = timeout
        self._backoff = backoff_seconds

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url)

    def report(self, r: TestReport) -> bool:
        """Stores ``r`` in ResultsDB; True once stored. Logs every failure and never raises."""
        if not self.enabled:
            log.debug("resultsdb.url not set: not reporting %s for %s", r.testcase, r.image.path)
            return False
        try:
            return self._report(r)
        except Exception:
            # The last guard of "reporting never blocks publishing": a bug here is logged in full.
            log.exception("reporting %s for %s to ResultsDB failed", r.testcase, r.image.filename)
            return False

    def _report(self, r: TestReport) -> bool:
        report_id = str(uuid.uuid4())
        result = _conventions_result(r, report_id)
        what = f"{r.testcase} {r.outcome} for {r.image.filename}" + (
            f" ({r.ami} in {r.region})" if r.ami else ""
        )
        where = _safe_url(self._settings.url)
        attempts = max(1, self._settings.attempts)
        api = _client(self._settings.url, _TimeoutAdapter(self._timeout), self._auth())
        try:
            for attempt in range(1, attempts + 1):
                if attempt > 1 and self._already_stored(api, report_id):
                    log.info("reported %s to %s (stored by an earlier attempt)", what, where)
                    return True
                try:
                    created = result.report(api, default_extradata=False, default_groups=False)
                except ResultsDBapiException as e:
                    status = e.response.status_code if e.response is not None else None
                    if status not in RETRYABLE_STATUSES:
                        log.error("ResultsDB %s refused %s: %s", where, what, e.message)
                        return False
                    log.warning("attempt %d/%d: ResultsDB %s: %s", attempt, attempts, where, e)
                except requests.RequestException as e:
                    log.warning("attempt %d/%d: ResultsDB %s: %s", attempt, attempts, where, e)
                else:
                    log.info("reported %s to %s as result %s", what, where, created.get("id"))
                    return True
                if attempt < attempts:
                    time.sleep(min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))
        finally:
            api.session.close()
        log.error("gave up reporting %s to %s after %d attempts", what, where, attempts)
        return False

    def _already_stored(self, api: Any, report_id: str) -> bool:
        """Whether an earlier attempt was stored although its answer was lost or an error."""
        try:
            found = api.get_results(limit=1, raw_params={REPORT_ID_KEY: report_id})
        except (ResultsDBapiException, requests.RequestException) as e:
            log.debug("could not check for an earlier attempt: %s", e)
            return False
        return bool(found.get("data"))

    def _auth(self) -> requests.auth.AuthBase | None:
        """Basic auth from the environment variables the settings name; the values stay unlogged."""
        user = os.environ.get(self._settings.username_env, "")
        password = os.environ.get(self._settings.password_env, "")
        if user and password:
            return ResultsDBAuth.basic_auth(user, password)  # type: ignore[no-any-return]
        if user or password:
            log.warning(
                "only one of %s and %s is set: reporting without authentication",
                self._settings.username_env,
                self._settings.password_env,
            )
        return None


def _conventions_result(r: TestReport, report_id: str) -> Any:
    """The ProductmdImageResult for ``r``, its data and groups filled in (nothing is sent)."""
    result = ProductmdImageResult(
        r.image.as_productmd(),
        r.compose.as_composeinfo(),
        outcome=r.outcome,
        tc_name=r.testcase,
        note=r.note,
        ref_url=r.ref_url,
        source=SOURCE,
    )
    extra = {
        "ami": r.ami,
        "region": r.region,
        "architecture": r.arch or r.image.arch,
        "firmware": r.firmware,
        REPORT_ID_KEY: report_id,
    }
    result.extradata.update({k: v for k, v in extra.items() if v})
    # With no ResultsDB instance, report() only fills in the conventions' data and groups.
    result.report(None)
    return result


def _safe_url(url: str) -> str:
    """The URL without any user:password part, for log lines."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def resultsdb_sink(reporter: ResultsReporter) -> Sink:
    """An event sink reporting every event that carries a TestReport in ``detail["test_report"]``.

    The pipeline may instead call :meth:`ResultsReporter.report` directly; either way a failure
    is only logged.
    """

    def sink(event: Event) -> None:
        report = event.detail.get("test_report")
        if isinstance(report, TestReport):
            reporter.report(report)

    return sink


# --- reading back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """One fedimg result as read back from ResultsDB."""

    id: int
    testcase: str
    outcome: str
    item: str
    architecture: str
    region: str
    ami: str
    firmware: str
    submit_time: str
    note: str
    ref_url: str

    @classmethod
    def from_api(cls, result: Mapping[str, Any]) -> ResultRow:
        data: Mapping[str, list[str]] = result.get("data") or {}

        def first(key: str) -> str:
            values = data.get(key) or [""]
            return str(values[0])

        return cls(
            id=int(result["id"]),
            testcase=str(result["testcase"]["name"]),
            outcome=str(result["outcome"]),
            item=first("item"),
            architecture=first("architecture") or first("productmd.image.arch"),
            region=first("region"),
            ami=first("ami"),
            firmware=first("firmware"),
            submit_time=str(result.get("submit_time") or ""),
            note=str(result.get("note") or ""),
            ref_url=str(result.get("ref_url") or ""),
        )


def fetch_results(
    url: str, compose_id: str, *, timeout: float = REQUEST_TIMEOUT
) -> list[ResultRow]:
    """fedimg's results for one compose, newest first.

    Raises TransientError when ResultsDB cannot be read. Reads are idempotent, so here the one
    retry layer is urllib3's: 2 retries of a GET on connection errors and 5xx.
    """
    retry = Retry(
        total=2, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504), allowed_methods={"GET"}
    )
    api = _client(url, _TimeoutAdapter(timeout, max_retries=retry))
    filters = {"productmd.compose.id": compose_id, "source": SOURCE}
    rows: list[ResultRow] = []
    try:
        for page in range(MAX_PAGES):
            answer = api.get_results(page=page, limit=PAGE_SIZE, raw_params=filters)
            rows.extend(ResultRow.from_api(r) for r in answer.get("data") or [])
            if not answer.get("next"):
                return rows
    except (ResultsDBapiException, requests.RequestException) as e:
        raise TransientError(f"ResultsDB {_safe_url(url)}: cannot read results: {e}") from e
    finally:
        api.session.close()
    log.warning("ResultsDB: more than %d results for %s; showing the first", len(rows), compose_id)
    return rows


OUTCOME_STYLES = {PASSED: "green", FAILED: "bold red", NEEDS_INSPECTION: "yellow"}


def results_table(rows: list[ResultRow], title: str = "") -> Table:
    table = Table(title=title or None)
    for column in ("time (UTC)", "testcase", "outcome", "image", "arch", "region", "AMI", "boot"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.submit_time[:19].replace("T", " "),
            row.testcase,
            f"[{OUTCOME_STYLES.get(row.outcome, 'white')}]{row.outcome}[/]",
            row.item,
            row.architecture,
            row.region or "-",
            row.ami or "-",
            row.firmware or "-",
        )
    return table


# Exit statuses of results_command.
EXIT_OK = 0
EXIT_UNREADABLE = 1
EXIT_NOT_CONFIGURED = 2


def results_command(
    url: str, compose_id: str, as_json: bool, console: Console | None = None
) -> int:
    """``fedimg results COMPOSE_ID``: prints fedimg's results for a compose.

    Returns EXIT_OK when ResultsDB was read (even with no results), EXIT_UNREADABLE when it could
    not be, EXIT_NOT_CONFIGURED when no URL is set.
    """
    console = console or Console()
    if not url:
        console.print("[red]resultsdb.url is not set in the configuration[/]")
        return EXIT_NOT_CONFIGURED
    try:
        rows = fetch_results(url, compose_id)
    except TransientError as e:
        console.print(f"[red]{e}[/]", highlight=False)
        return EXIT_UNREADABLE
    if as_json:
        console.out(json.dumps([asdict(r) for r in rows], indent=2), highlight=False)
    elif rows:
        console.print(results_table(rows, title=f"fedimg results for {compose_id}"))
    else:
        console.print(f"no fedimg results for {compose_id} in {_safe_url(url)}")
    return EXIT_OK


__all__ = [
    "OUTCOMES",
    "TESTCASE_AMI_BOOT",
    "TESTCASE_LOCAL_BOOT",
    "ComposeRef",
    "ImageRef",
    "ResultRow",
    "ResultsReporter",
    "TestReport",
    "fetch_results",
    "results_command",
    "results_table",
    "resultsdb_sink",
]
