from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedimg import config
from fedimg.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "fedimg.example.toml"


def test_example_config_is_valid_and_equals_the_defaults_it_documents() -> None:
    s = config.load(EXAMPLE)
    assert s.image == config.ImageSettings()
    assert s.publish == config.PublishSettings()
    assert s.aws.base_region == "us-east-1"


def test_no_file_gives_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    s = config.load()
    assert s.image.boot_mode == {"x86_64": "uefi-preferred", "aarch64": "uefi"}
    assert s.image.volume_type == "gp3" and s.image.imds_v2 and not s.image.tpm
    assert s.image.name_template == "{image_name}-hvm-{region}-{volume_type}-0"


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[aws]\nbase_region = "eu-west-1"\nregions = ["eu-west-1"]\n')
    monkeypatch.setenv(config.ENV_VAR, str(f))
    assert config.load().aws.base_region == "eu-west-1"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"aws": {"regoins": ["us-east-1"]}}, "aws.regoins: unknown key"),
        ({"nope": {}}, "nope: unknown key"),
        ({"aws": {"regions": ["us-east-1", "mars-1"]}}, "aws.regions[1]"),
        ({"aws": {"regions": []}}, "aws.regions"),
        ({"aws": {"base_region": "US_EAST"}}, "aws.base_region"),
        ({"aws": {"upload_workers": "many"}}, "aws.upload_workers: must be a number"),
        ({"aws": {"upload_workers": 0}}, "aws.upload_workers: must be at least 1"),
        ({"aws": {"endpoint_url": "ftp://x"}}, "aws.endpoint_url"),
        ({"image": {"tpm": True}}, "image.tpm: needs boot mode uefi"),
        ({"image": {"tpm": "yes"}}, "image.tpm: must be true or false"),
        ({"image": {"boot_mode": {"x86_64": "bios"}}}, "image.boot_mode.x86_64"),
        ({"image": {"boot_mode": {"ppc64le": "uefi"}}}, "image.boot_mode.ppc64le"),
        ({"image": {"volume_type": "gp9"}}, "image.volume_type"),
        ({"image": {"name_template": "{image_name}-{colour}"}}, "image.name_template: unknown"),
        ({"image": {"name_template": "{image_name"}}, "image.name_template"),
        ({"image": {"name_template": "fixed-name"}}, "image.name_template: must contain"),
        ({"image": {"tags": {"fedimg:x": "y"}}}, "image.tags.fedimg:x"),
        ({"compose": {"arches": ["s390x"]}}, "compose.arches[0]"),
        ({"publish": {"user_ids": ["123"]}}, "publish.user_ids[0]"),
        ({"publish": {"deprecate_after_days": 731}}, "publish.deprecate_after_days: AWS allows"),
        (
            {"publish": {"public": False, "deprecate_after_days": 3651}},
            "publish.deprecate_after_days",
        ),
        ({"publish": {"public": False, "public_snapshots": True}}, "publish.public_snapshots"),
        ({"image": {"tags": {f"k{n}": "v" for n in range(42)}}}, "image.tags: 42 tags"),
        ({"image": {"tags": {"AWS:team": "x"}}}, "image.tags.AWS:team: tag keys beginning"),
        ({"image": {"tags": {"Name": "x"}}}, "image.tags.Name: set by fedimg"),
        ({"image": {"tags": {"k" * 128: "x"}}}, "tag key of 128 characters"),
        ({"image": {"tags": {"k": "v" * 256}}}, "image.tags.k: tag value of 256"),
        ({"image": {"name_template": "{image_name}-" + "x" * 80}}, "image.name_template: for"),
        ({"image": {"name_template": "{image_name}#{region}"}}, "image.name_template"),
        ({"publish": {"ssm_parameter": "fedimg/{arch}"}}, "publish.ssm_parameter"),
        ({"publish": {"ssm_parameter": "/fedimg/{arch} latest"}}, "publish.ssm_parameter"),
        ({"publish": {"ssm_parameter": "/ssm/{arch}"}}, "publish.ssm_parameter: for"),
        ({"publish": {"ssm_parameter": "/a" * 15 + "/{arch}"}}, "16 levels"),
        ({"publish": {"ssm_parameter": "/{arch}/" + "x" * 970}}, "too long in us-east-1"),
        ({"publish": {"ssm_parameter": "/{region}/latest"}}, "publish.ssm_parameter: unknown"),
        (
            {"test": {"checks": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]}},
            "test.checks",
        ),
        ({"test": {"checks": [{"name": "a"}]}}, "test.checks"),
        ({"resultsdb": {"url": "resultsdb"}}, "resultsdb.url"),
    ],
)
def test_invalid_config_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_tags_up_to_awss_limit_less_fedimgs_own_are_accepted() -> None:
    limit = config.MAX_EXTRA_TAGS
    tags = {f"k{n}": "v" * 255 for n in range(limit)} | {"k" * 127: ""}
    with pytest.raises(ConfigError, match=rf"image\.tags: {limit + 1} tags"):
        config.from_dict({"image": {"tags": tags}})
    tags.pop("k0")
    assert len(config.from_dict({"image": {"tags": tags}}).image.tags) == limit


def test_name_template_is_checked_with_the_longest_configured_region() -> None:
    template = "{image_name}-{region}-"
    longest = config.LONGEST_IMAGE_NAME + "-us-east-1-"
    template += "x" * (128 - len(longest))  # exactly 128 characters in us-east-1
    ok = {"aws": {"regions": ["us-east-1"]}, "image": {"name_template": template}}
    assert config.from_dict(ok).image.name_template == template
    longer = ok | {"aws": {"regions": ["us-east-1", "ap-southeast-2"]}}
    with pytest.raises(ConfigError, match=r"image.name_template: .* \(133 characters\)"):
        config.from_dict(longer)


def test_shared_amis_may_be_deprecated_later_than_public_ones() -> None:
    s = config.from_dict({"publish": {"public": False, "deprecate_after_days": 3650}})
    assert s.publish.deprecate_after_days == 3650 and not s.publish.public_snapshots


def test_tpm_is_accepted_with_uefi_everywhere() -> None:
    s = config.from_dict({"image": {"tpm": True, "boot_mode": {"x86_64": "uefi"}}})
    assert s.image.tpm


def test_checks_are_data() -> None:
    s = config.from_dict(
        {"test": {"checks": [{"name": "uname", "command": "uname", "expect": "Linux"}]}}
    )
    assert s.test.checks == (config.Check("uname", "uname", "Linux"),)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[image]\ntpm = true\n", "image.tpm"),
        ('[image.tags]\n"aws:owner" = "x"\n', "image.tags.aws:owner"),
    ],
)
def test_cli_exits_2_with_one_line_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    r = subprocess.run(
        [sys.executable, "-m", "fedimg.cli", "--config", str(f), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith(f"fedimg: config error: {key}: ")


def test_cli_rejects_unreadable_toml(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[aws\n")
    r = subprocess.run(
        [sys.executable, "-m", "fedimg.cli", "--config", str(f), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "not valid TOML" in r.stderr
