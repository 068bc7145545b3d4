"""Reporting to ResultsDB (the stand-in, over HTTP) and reading results back."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from rich.console import Console

from fedimg import report
from fedimg.config import ResultsDBSettings
from fedimg.errors import InputError, TransientError
from fedimg.events import Event
from fedimg.report import (
    TESTCASE_AMI_BOOT,
    TESTCASE_LOCAL_BOOT,
    ComposeRef,
    ImageRef,
    ResultsReporter,
    TestReport,
    fetch_results,
    results_command,
    results_table,
    resultsdb_sink,
)
from fedimg.standins.resultsdb import fail_next_posts, post_count, resultsdb_standin

USER_ENV = "FEDIMG_TEST_RDB_USER"
PASSWORD_ENV = "FEDIMG_TEST_RDB_PASSWORD"
SECRET = "pa55-w0rd-never-logged"
IMAGE = ImageRef.from_productmd(
    {
        "path": "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-41-20241020.0.x86_64.raw.xz",
        "arch": "x86_64",
        "subvariant": "Cloud_Base",
        "type": "raw-xz",
        "format": "raw.xz",
        "disc_number": 1,
        "disc_count": 1,
        "size": 512_000_000,
        "checksums": {"sha256": "ab" * 32},
        "mtime": 1729400000,
        "volume_id": None,
        "bootable": False,
        "implant_md5": None,
    }
)
COMPOSE = ComposeRef.from_id("Fedora-Cloud-41-20241020.0")


@pytest.fixture
def rdb() -> Iterator[str]:
    with resultsdb_standin() as url:
        yield url


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


def reporter(url: str, attempts: int = 3) -> ResultsReporter:
    settings = ResultsDBSettings(
        url=url, username_env=USER_ENV, password_env=PASSWORD_ENV, attempts=attempts
    )
    # Tiny backoff and timeout keep the retry tests fast; the attempt count is what they check.
    return ResultsReporter(settings, timeout=2.0, backoff_seconds=0.01)


def boot_report(outcome: str = "PASSED", **changes: Any) -> TestReport:
    fields: dict[str, Any] = {
        "outcome": outcome,
        "testcase": TESTCASE_AMI_BOOT,
        "image": IMAGE,
        "compose": COMPOSE,
        "ami": "ami-0123456789abcdef0",
        "region": "us-east-1",
        "firmware": "uefi",
        "note": "5 checks passed",
        "ref_url": "https://example.org/log",
    }
    fields.update(changes)
    return TestReport(**fields)


def stored(url: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/results", params={"limit": "100"}, timeout=5).json()
    return list(answer["data"])


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v2.0"


def test_report_posts_the_conventions_data_and_the_ami_keys(rdb: str) -> None:
    assert reporter(rdb).report(boot_report()) is True

    [result] = stored(rdb)
    assert result["outcome"] == "PASSED"
    assert result["testcase"]["name"] == "fedimg.ami.boot"
    assert result["note"] == "5 checks passed"
    assert result["ref_url"] == "https://example.org/log"
    data = {k: v[0] for k, v in result["data"].items()}
    assert data["item"] == "Fedora-Cloud-Base-AmazonEC2-41-20241020.0.x86_64.raw.xz"
    assert data["type"] == "compose"
    assert data["source"] == "fedimg"
    assert data["productmd.compose.id"] == "Fedora-Cloud-41-20241020.0"
    assert data["productmd.compose.short"] == "Fedora-Cloud"
    assert data["productmd.compose.version"] == "41"
    assert data["productmd.compose.respin"] == "0"
    assert data["productmd.image.arch"] == "x86_64"
    assert data["productmd.image.type"] == "raw-xz"
    assert data["productmd.image.format"] == "raw.xz"
    assert data["productmd.image.subvariant"] == "Cloud_Base"
    assert data["ami"] == "ami-0123456789abcdef0"
    assert data["region"] == "us-east-1"
    assert data["architecture"] == "x86_64"
    assert data["firmware"] == "uefi"
    # Groups: source, compose, fedimg+compose, image, fedimg+image.
    assert len(result["groups"]) == 5
    descriptions = {
        g["description"] for g in requests.get(f"{rdb}/groups", timeout=5).json()["data"]
    }
    assert "compose.Fedora-Cloud-41-20241020.0" in descriptions
    assert "image.cloud_base.raw-xz.raw.xz.x86_64.1" in descriptions


def test_a_local_boot_report_leaves_out_the_empty_ami_keys(rdb: str) -> None:
    local = boot_report(testcase=TESTCASE_LOCAL_BOOT, ami="", region="", firmware="")
    assert reporter(rdb).report(local) is True
    [result] = stored(rdb)
    assert result["testcase"]["name"] == "fedimg.image.localboot"
    assert "ami" not in result["data"] and "region" not in result["data"]
    assert result["data"]["architecture"] == ["x86_64"]


def test_architecture_is_the_images_arch_unless_the_boot_result_names_its_own(rdb: str) -> None:
    path = IMAGE.path.replace("x86_64", "aarch64")
    arm = ImageRef.from_productmd(IMAGE.as_productmd() | {"path": path, "arch": "aarch64"})
    local = boot_report(testcase=TESTCASE_LOCAL_BOOT, ami="", region="", image=arm)
    assert reporter(rdb).report(boot_report(image=arm, ami="ami-0aaaaaaaaaaaaaaa1"))
    assert reporter(rdb).report(local)
    # A local boot of what the metadata calls x86_64 that the image shows to be aarch64.
    assert reporter(rdb).report(boot_report(testcase=TESTCASE_LOCAL_BOOT, arch="aarch64"))

    rows = fetch_results(rdb, COMPOSE.id)
    assert sorted((r.item.split(".")[-3], r.testcase, r.architecture) for r in rows) == [
        ("aarch64", TESTCASE_AMI_BOOT, "aarch64"),
        ("aarch64", TESTCASE_LOCAL_BOOT, "aarch64"),
        ("x86_64", TESTCASE_LOCAL_BOOT, "aarch64"),
    ]


def test_basic_auth_comes_from_the_named_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(USER_ENV, "fedimg")
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with resultsdb_standin(auth=("fedimg", SECRET)) as url:
        assert reporter(url).report(boot_report()) is True
        assert len(stored(url)) == 1


def test_wrong_credentials_return_false_without_retrying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(USER_ENV, "fedimg")
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with resultsdb_standin(auth=("fedimg", SECRET)) as url:
        assert reporter(url).report(boot_report()) is False
        assert post_count(url) == 1
        assert stored(url) == []


def test_missing_credentials_return_false() -> None:
    with resultsdb_standin(auth=("fedimg", SECRET)) as url:
        assert reporter(url).report(boot_report()) is False


def test_a_dead_url_returns_false_quickly_after_the_bounded_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fedimg.report")
    started = time.monotonic()
    assert reporter(closed_port_url(), attempts=3).report(boot_report()) is False
    assert time.monotonic() - started < 5
    attempts = [r for r in caplog.records if "attempt " in r.getMessage()]
    assert [r.getMessage()[:11] for r in attempts] == ["attempt 1/3", "attempt 2/3", "attempt 3/3"]
    assert "gave up" in caplog.records[-1].getMessage()


def test_a_server_that_never_answers_cannot_hang_the_report() -> None:
    with socket.socket() as silent:
        # Listening but never accepting: connections succeed, answers never come.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v2.0"
        settings = ResultsDBSettings(url=url, attempts=2)
        slow = ResultsReporter(settings, timeout=0.2, backoff_seconds=0.01)
        started = time.monotonic()
        assert slow.report(boot_report()) is False
        assert time.monotonic() - started < 3


def test_one_500_then_201_stores_exactly_one_result(rdb: str) -> None:
    fail_next_posts(rdb, 1, status=500)
    assert reporter(rdb).report(boot_report()) is True
    # Two POSTs, both from fedimg's own loop: the client's internal retry is off.
    assert post_count(rdb) == 2
    assert len(stored(rdb)) == 1


def test_a_500_after_the_server_stored_the_result_is_not_posted_again(rdb: str) -> None:
    fail_next_posts(rdb, 1, status=500, store=True)
    assert reporter(rdb).report(boot_report()) is True
    assert post_count(rdb) == 1
    assert len(stored(rdb)) == 1


def test_persistent_5xx_gives_up_after_exactly_the_configured_attempts(rdb: str) -> None:
    fail_next_posts(rdb, 10, status=503)
    assert reporter(rdb, attempts=3).report(boot_report()) is False
    assert post_count(rdb) == 3
    assert stored(rdb) == []


def test_credentials_never_appear_in_log_output(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(USER_ENV, "fedimg")
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    with resultsdb_standin(auth=("fedimg", SECRET)) as url:
        fail_next_posts(url, 1)
        assert reporter(url).report(boot_report()) is True
    with resultsdb_standin(auth=("fedimg", "other")) as url:
        assert reporter(url).report(boot_report()) is False
    assert caplog.records, "the reports should have logged something"
    assert "reported fedimg.ami.boot PASSED" in caplog.text
    assert SECRET not in caplog.text


def test_a_url_with_credentials_in_it_is_logged_without_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fedimg.report")
    url = closed_port_url().replace("http://", f"http://fedimg:{SECRET}@")
    assert reporter(url, attempts=1).report(boot_report()) is False
    assert "127.0.0.1" in caplog.text
    assert SECRET not in caplog.text


def test_reporting_is_off_without_a_url() -> None:
    quiet = ResultsReporter(ResultsDBSettings(url=""))
    assert quiet.enabled is False
    assert quiet.report(boot_report()) is False


def test_an_unknown_outcome_or_no_testcase_is_refused() -> None:
    with pytest.raises(InputError, match="outcome"):
        boot_report(outcome="GREAT")
    with pytest.raises(InputError, match="testcase"):
        boot_report(testcase="")


def test_compose_ref_from_id_reads_release_and_compose_type() -> None:
    nightly = ComposeRef.from_id("Fedora-Rawhide-20240501.n.2")
    assert (nightly.release_short, nightly.release_version) == ("Fedora", "Rawhide")
    assert (nightly.date, nightly.type, nightly.respin) == ("20240501", "nightly", 2)
    assert ComposeRef.from_composeinfo(nightly.as_composeinfo()) == nightly
    with pytest.raises(InputError, match="no date"):
        ComposeRef.from_id("not-a-compose")
    with pytest.raises(InputError, match="Unknown compose type"):
        ComposeRef.from_id("Fedora-41-20241020.x.0")


def test_the_event_sink_reports_events_carrying_a_test_report(rdb: str) -> None:
    sink = resultsdb_sink(reporter(rdb))
    sink(Event(stage="test", status="completed", detail={"test_report": boot_report()}))
    sink(Event(stage="test", status="started", image=IMAGE.filename))
    assert len(stored(rdb)) == 1


def test_fetch_results_reads_back_what_was_posted_for_that_compose(rdb: str) -> None:
    r = reporter(rdb)
    assert r.report(boot_report())
    assert r.report(boot_report(outcome="FAILED", region="eu-west-1", ami="ami-0fff"))
    other = ComposeRef.from_id("Fedora-Cloud-40-20240401.0")
    assert r.report(boot_report(compose=other))

    rows = fetch_results(rdb, COMPOSE.id)
    assert [(row.outcome, row.region, row.ami) for row in rows] == [
        ("FAILED", "eu-west-1", "ami-0fff"),
        ("PASSED", "us-east-1", "ami-0123456789abcdef0"),
    ]
    assert rows[0].testcase == TESTCASE_AMI_BOOT
    assert rows[0].item == IMAGE.filename
    assert rows[0].architecture == "x86_64"
    assert rows[0].firmware == "uefi"


def test_fetch_results_follows_the_pages(rdb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "PAGE_SIZE", 2)
    r = reporter(rdb)
    for n in range(5):
        assert r.report(boot_report(ami=f"ami-{n}"))
    assert [row.ami for row in fetch_results(rdb, COMPOSE.id)] == [
        f"ami-{n}" for n in range(4, -1, -1)
    ]


def test_fetch_results_from_a_dead_url_raises_a_transient_error() -> None:
    with pytest.raises(TransientError, match="cannot read results"):
        fetch_results(closed_port_url(), COMPOSE.id, timeout=1.0)


def test_results_command_prints_json(rdb: str) -> None:
    assert reporter(rdb).report(boot_report())
    out = io.StringIO()
    assert results_command(rdb, COMPOSE.id, as_json=True, console=Console(file=out)) == 0
    [row] = json.loads(out.getvalue())
    assert row["ami"] == "ami-0123456789abcdef0"
    assert row["outcome"] == "PASSED"


def test_results_command_prints_a_table(rdb: str) -> None:
    assert reporter(rdb).report(boot_report())
    out = io.StringIO()
    console = Console(file=out, width=250)
    assert results_command(rdb, COMPOSE.id, as_json=False, console=console) == 0
    assert "ami-0123456789abcdef0" in out.getvalue()
    assert "PASSED" in out.getvalue()


def test_results_command_exit_statuses_for_failures() -> None:
    console = Console(file=io.StringIO())
    assert results_command("", COMPOSE.id, as_json=False, console=console) == 2
    assert results_command(closed_port_url(), COMPOSE.id, as_json=False, console=console) == 1


def test_results_table_has_a_row_per_result(rdb: str) -> None:
    assert reporter(rdb).report(boot_report())
    assert reporter(rdb).report(boot_report(outcome="FAILED"))
    assert results_table(fetch_results(rdb, COMPOSE.id)).row_count == 2
