"""The command line as users and other programs call it: real processes, JSON contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedimg.boot.sample import corrupt_variants, sample_image_xz
from fedimg.cli import STANDINS_EXTRA, main
from fedimg.standins.samplecompose import serve_directory

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "composes"
DRY_RUN_KEYS = {"path", "arch", "subvariant", "type", "sha256", "size"}
TEST_IMAGE_KEYS = {"image", "firmware", "outcome", "checks", "seconds"}


def fedimg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedimg.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | (env or {}),
    )


@pytest.mark.parametrize("compose_id", ["Fedora-41-20241024.0", "Fedora-42-20250409.0"])
def test_compose_dry_run_json_selects_the_ec2_images(compose_id: str) -> None:
    r = fedimg("compose", str(FIXTURES / compose_id / "compose"), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    images = json.loads(r.stdout)
    assert isinstance(images, list) and len(images) == 2
    assert all(set(i) == DRY_RUN_KEYS for i in images)
    assert sorted(i["arch"] for i in images) == ["aarch64", "x86_64"]
    for i in images:
        assert i["path"] == f"Cloud/{i['arch']}/images/" + i["path"].rsplit("/", 1)[1]
        assert "Fedora-Cloud-Base-AmazonEC2-" in i["path"] and i["path"].endswith(".raw.xz")
        assert (i["subvariant"], i["type"]) == ("Cloud_Base", "raw-xz")
        assert len(i["sha256"]) == 64 and i["size"] > 100_000_000


def test_compose_dry_run_of_a_missing_compose_is_one_line() -> None:
    r = fedimg("compose", "/nonexistent/compose", "--dry-run", "--json")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("fedimg: error:")


def test_test_image_json(build_dir: Path, tmp_path: Path) -> None:
    r = fedimg(
        "test-image",
        str(sample_image_xz(build_dir)),
        "--firmware",
        "bios",
        "--sample-checks",
        "--json",
        env={"TMPDIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= TEST_IMAGE_KEYS
    assert out["firmware"] == "bios" and out["outcome"] == "PASSED"
    assert {"name", "outcome", "output"} <= set(out["checks"][0])
    # A pass leaves nothing behind: no work folder, no logs.
    assert out["serial_log"] == ""
    assert list(tmp_path.iterdir()) == []


def truncated_xz(build_dir: Path, where: Path) -> Path:
    cut = where / "cut.raw.xz"
    cut.write_bytes(sample_image_xz(build_dir).read_bytes()[:-4096])
    return cut


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one error line, last on stderr (after any progress log lines)."""
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("fedimg: error: ")]
    assert errors == lines[-1:], r.stderr
    return errors[0]


def test_test_image_of_a_truncated_xz_is_one_error_line(build_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    cut = truncated_xz(build_dir, tmp_path)

    r = fedimg("test-image", str(cut), "--json", env={"TMPDIR": str(work)})

    assert r.returncode == 1
    assert r.stdout == ""
    assert f"{cut}: not a valid xz file" in one_error_line(r)
    assert list(work.iterdir()) == []


def test_test_image_reads_a_url_as_a_url(build_dir: Path, tmp_path: Path) -> None:
    # A truncated image fails while downloading, before QEMU: the URL reached the server intact.
    truncated_xz(build_dir, tmp_path)
    with serve_directory(tmp_path) as base:
        r = fedimg("test-image", f"{base}/cut.raw.xz", "--json")

    assert r.returncode == 1
    assert f"{base}/cut.raw.xz" in one_error_line(r) and "xz" in r.stderr


def test_upload_of_a_missing_file_says_so_first(tmp_path: Path) -> None:
    r = fedimg("upload", str(tmp_path / "Fedora-Cloud-Base.img"))

    assert r.returncode == 1
    assert one_error_line(r) == f"fedimg: error: {tmp_path}/Fedora-Cloud-Base.img: no such file"


def test_results_without_a_resultsdb_url_is_one_error_line() -> None:
    r = fedimg("results", "Fedora-41-20241024.0", env={"FEDIMG_CONFIG": ""})

    assert r.returncode == 2
    assert "resultsdb.url is not set" in one_error_line(r)


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_accepted_before_and_after_the_command(where: str, tmp_path: Path) -> None:
    cfg = tmp_path / "fedimg.toml"
    cfg.write_text('[aws]\nbase_region = "eu-west-1"\nregions = ["eu-west-1"]\n')
    option = ["--config", str(cfg)]
    args = [*option, "check-config"] if where == "before" else ["check-config", *option]

    r = fedimg(*args)

    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["aws"]["base_region"] == "eu-west-1"


def test_the_example_configuration_shows_exactly_the_defaults() -> None:
    example = FIXTURES.parent.parent.parent / "fedimg.example.toml"

    shown = fedimg("check-config", "--config", str(example))
    defaults = fedimg("check-config", env={"FEDIMG_CONFIG": ""})

    assert shown.returncode == defaults.returncode == 0, shown.stderr + defaults.stderr
    assert json.loads(shown.stdout) == json.loads(defaults.stdout)


def test_test_image_of_a_broken_image_fails(build_dir: Path) -> None:
    broken = corrupt_variants(build_dir)["broken-boot-sector"]
    r = fedimg("test-image", str(broken), "--firmware", "bios", "--sample-checks", "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["outcome"] == "FAILED" and "bootable" in out["reason"]


def test_results_reads_back_what_was_reported(tmp_path: Path) -> None:
    from fedimg.config import ResultsDBSettings
    from fedimg.report import TESTCASE_AMI_BOOT, ComposeRef, ImageRef, ResultsReporter, TestReport
    from fedimg.standins.resultsdb import resultsdb_standin

    compose_id = "Fedora-Cloud-41-20241024.0"
    image = ImageRef(
        "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64.raw.xz",
        "x86_64",
        "Cloud_Base",
        "raw-xz",
        "raw.xz",
    )
    with resultsdb_standin() as url:
        reporter = ResultsReporter(ResultsDBSettings(url=url))
        report = TestReport(
            "PASSED",
            TESTCASE_AMI_BOOT,
            image,
            ComposeRef.from_id(compose_id),
            "ami-0123",
            "us-east-1",
        )
        assert reporter.report(report)
        cfg = tmp_path / "fedimg.toml"
        cfg.write_text(f'[resultsdb]\nurl = "{url}"\n')
        r = fedimg("--config", str(cfg), "results", compose_id, "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["testcase"], row["outcome"], row["ami"]) == (
        TESTCASE_AMI_BOOT,
        "PASSED",
        "ami-0123",
    )


def test_demo_without_the_stand_ins_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto is only in an extra: without it the demo fails in one line naming that extra."""
    monkeypatch.setitem(sys.modules, "moto", None)  # what ``import moto`` meets when not installed
    r = CliRunner().invoke(main, ["demo"])
    assert r.exit_code == 1
    install = f"pip install 'fedimg[{STANDINS_EXTRA}]'"
    assert r.stderr == f"fedimg: error: the demo needs the local stand-ins: {install}\n"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"][STANDINS_EXTRA]
    assert any(requirement.startswith("moto") for requirement in extra)
