"""fedimg's settings: one TOML file becomes typed, validated, frozen value objects.

Unknown keys are errors, every error names its key (``aws.regions[2]``), and nothing else in fedimg
reads the file. AWS credentials never appear here: they come from the standard AWS chain.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import string
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedimg import trust
from fedimg.aws import limits
from fedimg.errors import ConfigError

ENV_VAR = "FEDIMG_CONFIG"
ARCHES = ("x86_64", "aarch64")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
VOLUME_TYPES = ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
ORG_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:(organization|ou)/[a-z0-9/_-]+$")
NAME_FIELDS = ("image_name", "region", "volume_type", "arch", "release", "subvariant", "compose_id")
SSM_FIELDS = ("release", "subvariant", "arch", "image_name")
# A public AMI is deprecated by AWS two years after its creation at most.
MAX_DEPRECATION_DAYS = limits.PUBLIC_DEPRECATION_MAX_DAYS
# The most tags fedimg itself puts on one resource: Name and the five identity tags
# (identity.py: managed, image-key, image-name, sha256, compose-id), plus per kind: snapshots
# state, changed-blocks, linear-checksum, lease-owner, lease-until (snapshot.py); copies role,
# source-ami, source-region; test resources role, test-run, ami; and on every resource of a
# compose, its kind, release and subvariant (composekind.KIND_TAG_COUNT). image.tags may add
# AWS's 50 minus these; tests/test_pipeline.py fills a run up to exactly 50.
FEDIMG_TAGS_PER_RESOURCE = 14
MAX_EXTRA_TAGS = limits.TAGS_PER_RESOURCE - FEDIMG_TAGS_PER_RESOURCE
# The longest values a name template can meet, to check templates at start-up (regions and
# subvariants: the configured ones). Fedora's longest EC2 image names are Rawhide nightlies
# (Fedora-Cloud-Base-AmazonEC2-Rawhide-20240829.n.1.aarch64); these allow a two-digit respin.
LONGEST_IMAGE_NAME = "Fedora-Cloud-Base-AmazonEC2-Rawhide-20240829.n.99.aarch64"
LONGEST_RELEASE = "Rawhide"
LONGEST_COMPOSE_ID = "Fedora-Cloud-Rawhide-20240829.n.99"
LONGEST_ARCH = "aarch64"


@dataclass(frozen=True)
class AwsSettings:
    base_region: str = "us-east-1"
    regions: tuple[str, ...] = ("us-east-1",)
    endpoint_url: str = ""
    # The one retry layer (botocore "standard" mode): attempts per request, including the first.
    max_attempts: int = 6
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    upload_workers: int = 48
    # Minutes after which AWS abandons a snapshot that was started but never completed.
    snapshot_timeout_minutes: int = 120
    # Deadline for one snapshot/AMI/copy to become available (copies can take 30 min).
    wait_seconds: int = 3600
    # Concurrent copies of one image to other regions.
    copy_workers: int = 24


UPLOAD_METHODS = ("ebs-direct", "import-snapshot")
# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens (S3 User Guide, "Bucket
# naming rules").
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class UploadSettings:
    # "ebs-direct": blocks straight into a snapshot (no bucket). "import-snapshot": the raw image
    # is staged in an S3 bucket and imported with ImportSnapshot (aws/importsnapshot.py).
    method: str = "ebs-direct"
    # import-snapshot only: the bucket (in aws.base_region), the key prefix of staged images, and
    # the VM Import service role (AWS's default name).
    bucket: str = ""
    prefix: str = "fedimg/"
    role: str = "vmimport"
    # An import task whose status and progress do not change for this long is cancelled.
    stall_seconds: int = 1800
    # The longest an import task is followed before it is cancelled (AWS reports 15-100 min).
    deadline_seconds: int = 14400


@dataclass(frozen=True)
class ImageSettings:
    volume_type: str = "gp3"
    name_template: str = "{image_name}-hvm-{region}-{volume_type}-0"
    boot_mode: dict[str, str] = field(
        default_factory=lambda: {"x86_64": "uefi-preferred", "aarch64": "uefi"}
    )
    imds_v2: bool = True
    ena: bool = True
    sriov: bool = True
    tpm: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # Largest decompressed image accepted (decompression-bomb guard); Fedora's are 5 GiB.
    max_image_bytes: int = 32 * 1024**3


@dataclass(frozen=True)
class ComposeSettings:
    types: tuple[str, ...] = ("raw-xz",)
    subvariants: tuple[str, ...] = ("Cloud_Base",)
    arches: tuple[str, ...] = ("x86_64", "aarch64")
    # Images of one compose processed at once.
    image_workers: int = 4
    # Where a compose message's location must be (URL or absolute path prefixes, matched segment
    # by segment); every redirect met while fetching must stay inside them too (trust.py).
    trusted_locations: tuple[str, ...] = (trust.FEDORA_COMPOSES,)
    # A PEM file of CA certificates to verify compose servers with; "": the system's.
    ca_bundle: str = ""


@dataclass(frozen=True)
class PublishSettings:
    # "all" makes AMIs public; otherwise they are shared with the accounts/organizations below.
    public: bool = True
    user_ids: tuple[str, ...] = ()
    organization_arns: tuple[str, ...] = ()
    organizational_unit_arns: tuple[str, ...] = ()
    # Also make the AMIs' snapshots public (create-volume permission "all"). Launching a public
    # AMI needs no access to its snapshot; AWS's snapshot block-public-access must allow it.
    public_snapshots: bool = False
    # SSM parameter holding the latest AMI id per region; empty disables.
    ssm_parameter: str = "/fedimg/{release}/{subvariant}/{arch}/latest"
    # Days after the AMI's creation (in each region) at which it is deprecated; 0: fedimg sets
    # none (AWS still deprecates public AMIs two years after creation by default).
    deprecate_after_days: int = MAX_DEPRECATION_DAYS


@dataclass(frozen=True)
class Check:
    name: str
    command: str
    # The check passes when the command exits 0 and, if set, its stdout (stripped) equals this.
    expect: str = ""


DEFAULT_CHECKS = (
    Check("true", "/bin/true"),
    Check("system-running", "systemctl is-system-running --wait", "running"),
    Check("cloud-init", "cloud-init status --wait >/dev/null && cloud-init status", "status: done"),
    Check(
        "root-grown",
        "test $(( $(lsblk -bndo SIZE $(findmnt -nvo SOURCE /) ) * 100"
        " / $(lsblk -bndo SIZE /dev/$(lsblk -ndo PKNAME $(findmnt -nvo SOURCE /))) )) -ge 90",
    ),
    Check("selinux-enforcing", "getenforce", "Enforcing"),
)


@dataclass(frozen=True)
class TestSettings:
    enabled: bool = True
    # A failing boot test stops copy and publish of that image.
    block_publish: bool = True
    ssh_user: str = "fedora"
    # The addresses the boot test's SSH comes from; required when the EC2 boot test runs.
    ssh_cidr: str = ""
    # A world-open ssh_cidr (0.0.0.0/0, ::/0) is refused unless this says so.
    allow_ssh_from_anywhere: bool = False
    instance_types: dict[str, str] = field(
        default_factory=lambda: {"x86_64": "t3.small", "aarch64": "t4g.small"}
    )
    boot_seconds: int = 600
    ssh_seconds: int = 300
    check_seconds: int = 300
    checks: tuple[Check, ...] = DEFAULT_CHECKS
    # Region -> the subnet (or subnets, tried in order when one has no capacity) the test
    # instance is launched in; a region not named uses its default VPC's default subnets.
    subnet_ids: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    # "public": SSH to the instance's public address; "private": to its private address
    # (fedimg runs inside the VPC, or reaches it through a VPN or peering).
    ssh_address: str = "public"

    def subnets_in(self, region: str) -> tuple[str, ...]:
        """The configured subnets of ``region``, in order; () when none is configured."""
        given = self.subnet_ids.get(region, ())
        return (given,) if isinstance(given, str) else tuple(given)


@dataclass(frozen=True)
class ResultsDBSettings:
    # Empty: results are not reported.
    url: str = ""
    # Names of environment variables holding basic-auth credentials (never the secrets).
    username_env: str = "FEDIMG_RESULTSDB_USER"
    password_env: str = "FEDIMG_RESULTSDB_PASSWORD"  # noqa: S105 - a variable's name
    attempts: int = 3


@dataclass(frozen=True)
class MessagingSettings:
    # Publish fedimg's messages on the bus (the consumer's fedora-messaging config says where).
    publish: bool = True
    environment: str = "prod"
    # Redeliveries of one compose message after transient failures before it is dropped.
    max_redeliveries: int = 3


@dataclass(frozen=True)
class CatalogSettings:
    # Where the consumer writes catalog.json and index.html after each publish; "": it does not.
    output_dir: str = ""


@dataclass(frozen=True)
class RetentionSettings:
    """Which of fedimg's AMIs ``fedimg prune`` removes (composekind.py says what each kind is)."""

    # Days a pre-release's AMIs (Beta …) are kept after the first GA AMI of their release.
    prerelease_days_after_ga: int = 60
    # Days a nightly's AMIs (Rawhide, Branched, test composes) are kept after their creation.
    nightly_days: int = 30
    # The newest composes kept per release, subvariant and architecture, whatever their age.
    keep_newest: int = 3
    # GA AMIs get deregistration protection (publishing and prune set it).
    protect_ga: bool = True
    # The consumer prunes after each compose.
    prune_after_compose: bool = False
    # Before publishing past the region's public-AMI quota, prune that region per this policy.
    prune_for_quota: bool = True


@dataclass(frozen=True)
class Settings:
    aws: AwsSettings = field(default_factory=AwsSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    compose: ComposeSettings = field(default_factory=ComposeSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    test: TestSettings = field(default_factory=TestSettings)
    resultsdb: ResultsDBSettings = field(default_factory=ResultsDBSettings)
    messaging: MessagingSettings = field(default_factory=MessagingSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)

    def with_aws(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, aws=dataclasses.replace(self.aws, **changes))


T = TypeVar("T")


def load(path: str | Path | None = None) -> Settings:
    """Settings from ``path``, else ``$FEDIMG_CONFIG``, else the built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return validate(Settings())
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML: {e}") from e
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Settings:
    return validate(_build(Settings, data, ""))


def _build(cls: type[T], table: Any, where: str) -> T:
    if not isinstance(table, dict):
        raise ConfigError(f"{where or 'config'}: must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in names:
            raise ConfigError(f"{_join(where, key)}: unknown key")
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in table
    ]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: required")
    values = {k: _convert(hints[k], v, _join(where, k)) for k, v in table.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if hint is int or hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: must be a number")
        if hint is int and not isinstance(value, int):
            raise ConfigError(f"{where}: must be a whole number")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a table")
        item = typing.get_args(hint)[1]
        return {k: _convert(item, v, _join(where, k)) for k, v in value.items()}
    if isinstance(hint, types.UnionType):  # the first alternative the value fits
        for alternative in typing.get_args(hint):
            try:
                return _convert(alternative, value, where)
            except ConfigError:
                continue
        kinds = " or ".join(
            _KIND.get(typing.get_origin(a) or a, str(a)) for a in typing.get_args(hint)
        )
        raise ConfigError(f"{where}: must be {kinds}")
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover


_KIND = {str: "a string", tuple: "a list", dict: "a table", bool: "true or false"}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def validate(s: Settings) -> Settings:
    """Cross-field rules; raises ConfigError naming the key."""
    a, i = s.aws, s.image
    _region("aws.base_region", a.base_region)
    if not a.regions:
        raise ConfigError("aws.regions: must list at least one region")
    for n, r in enumerate(a.regions):
        _region(f"aws.regions[{n}]", r)
    if len(set(a.regions)) != len(a.regions):
        raise ConfigError("aws.regions: lists a region twice")
    if a.endpoint_url and not re.match(r"^https?://", a.endpoint_url):
        raise ConfigError("aws.endpoint_url: must be an http(s) URL")
    for key in ("max_attempts", "upload_workers", "copy_workers", "wait_seconds"):
        if getattr(a, key) < 1:
            raise ConfigError(f"aws.{key}: must be at least 1")
    if not 10 <= a.snapshot_timeout_minutes <= 4320:
        raise ConfigError("aws.snapshot_timeout_minutes: must be between 10 and 4320")
    _upload(s.upload)
    if i.volume_type not in VOLUME_TYPES:
        raise ConfigError(f"image.volume_type: must be one of {', '.join(VOLUME_TYPES)}")
    for arch, mode in i.boot_mode.items():
        if arch not in ARCHES:
            raise ConfigError(f"image.boot_mode.{arch}: unknown architecture")
        if mode not in BOOT_MODES:
            raise ConfigError(f"image.boot_mode.{arch}: must be one of {', '.join(BOOT_MODES)}")
        if i.tpm and mode != "uefi":
            raise ConfigError(
                f"image.tpm: needs boot mode uefi, but image.boot_mode.{arch} is {mode}"
            )
    _name_template(s)
    _tags(i.tags)
    if i.max_image_bytes < 512:
        raise ConfigError("image.max_image_bytes: must be at least 512")
    for n, arch in enumerate(s.compose.arches):
        if arch not in ARCHES:
            raise ConfigError(f"compose.arches[{n}]: unsupported architecture {arch!r}")
    if s.compose.image_workers < 1:
        raise ConfigError("compose.image_workers: must be at least 1")
    _trusted_locations(s.compose)
    p = s.publish
    for n, acct in enumerate(p.user_ids):
        if not ACCOUNT_RE.match(acct):
            raise ConfigError(f"publish.user_ids[{n}]: must be a 12-digit account id")
    for key in ("organization_arns", "organizational_unit_arns"):
        for n, arn in enumerate(getattr(p, key)):
            if not ORG_ARN_RE.match(arn):
                raise ConfigError(f"publish.{key}[{n}]: not an organizations ARN")
    days_max = MAX_DEPRECATION_DAYS if p.public else limits.DEPRECATION_MAX_DAYS
    if p.deprecate_after_days > days_max:
        audience = "public AMIs" if p.public else "AMIs"
        raise ConfigError(
            f"publish.deprecate_after_days: AWS allows at most {days_max} for {audience}"
        )
    if p.public_snapshots and not p.public:
        raise ConfigError("publish.public_snapshots: needs publish.public = true")
    if p.ssm_parameter:
        _ssm_template(s)
    t = s.test
    for arch in t.instance_types:
        if arch not in ARCHES:
            raise ConfigError(f"test.instance_types.{arch}: unknown architecture")
    _ssh_cidr(t)
    _test_network(s)
    names = [c.name for c in t.checks]
    if len(set(names)) != len(names):
        raise ConfigError("test.checks: two checks have the same name")
    if s.resultsdb.url and not re.match(r"^https?://", s.resultsdb.url):
        raise ConfigError("resultsdb.url: must be an http(s) URL")
    if s.messaging.environment not in ("prod", "stg"):
        raise ConfigError("messaging.environment: must be prod or stg")
    if s.retention.keep_newest < 1:
        raise ConfigError("retention.keep_newest: must be at least 1")
    return s


def _upload(u: UploadSettings) -> None:
    if u.method not in UPLOAD_METHODS:
        raise ConfigError(f"upload.method: must be one of {', '.join(UPLOAD_METHODS)}")
    if u.method == "import-snapshot" and not u.bucket:
        raise ConfigError("upload.bucket: required with upload.method = import-snapshot")
    if u.bucket and not BUCKET_RE.match(u.bucket):
        raise ConfigError(f"upload.bucket: {u.bucket!r} is not a valid S3 bucket name")
    if u.method == "import-snapshot" and not u.role:
        raise ConfigError("upload.role: required with upload.method = import-snapshot")
    for key in ("stall_seconds", "deadline_seconds"):
        if getattr(u, key) < 1:
            raise ConfigError(f"upload.{key}: must be at least 1")


def _region(key: str, value: str) -> None:
    if not REGION_RE.match(value):
        raise ConfigError(f"{key}: {value!r} is not an AWS region name")


def _template_fields(key: str, template: str, known: tuple[str, ...]) -> set[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from e
    unknown = fields - set(known)
    if unknown:
        raise ConfigError(
            f"{key}: unknown field {{{sorted(unknown)[0]}}}; known: {', '.join(known)}"
        )
    return fields


def _longest_values(s: Settings) -> dict[str, str]:
    """The longest value each template field can take with these settings."""
    return {
        "image_name": LONGEST_IMAGE_NAME,
        "region": max((s.aws.base_region, *s.aws.regions), key=len),
        "volume_type": s.image.volume_type,
        "arch": LONGEST_ARCH,
        "release": LONGEST_RELEASE,
        "subvariant": max((*s.compose.subvariants, "unknown"), key=len),
        "compose_id": LONGEST_COMPOSE_ID,
    }


def _name_template(s: Settings) -> None:
    key, template = "image.name_template", s.image.name_template
    if "image_name" not in _template_fields(key, template, NAME_FIELDS):
        raise ConfigError(f"{key}: must contain {{image_name}}")
    problem = limits.ami_name_problem(template.format(**_longest_values(s)))
    if problem:
        raise ConfigError(f"{key}: for the longest image name and region: {problem}")


def _ssm_template(s: Settings) -> None:
    key, template = "publish.ssm_parameter", s.publish.ssm_parameter
    _template_fields(key, template, SSM_FIELDS)
    values = _longest_values(s)
    name = template.format(**{f: values[f] for f in SSM_FIELDS})
    problem = limits.ssm_name_problem(name, values["region"])
    if problem:
        raise ConfigError(f"{key}: for the longest image name and region: {problem}")


def _tags(tags: dict[str, str]) -> None:
    if len(tags) > MAX_EXTRA_TAGS:
        raise ConfigError(
            f"image.tags: {len(tags)} tags; AWS allows {limits.TAGS_PER_RESOURCE} per resource "
            f"and fedimg adds up to {FEDIMG_TAGS_PER_RESOURCE}, so at most {MAX_EXTRA_TAGS}"
        )
    for k, v in tags.items():
        if k.lower().startswith("fedimg:") or k == "Name":
            raise ConfigError(f"image.tags.{k}: set by fedimg itself (Name and fedimg:*)")
        problem = limits.tag_problem(k, v)
        if problem:
            raise ConfigError(f"image.tags.{k}: {problem}")


def _trusted_locations(c: ComposeSettings) -> None:
    for n, prefix in enumerate(c.trusted_locations):
        problem = trust.prefix_problem(prefix)
        if problem:
            raise ConfigError(f"compose.trusted_locations[{n}]: {problem}")
    if c.ca_bundle and not os.path.isfile(c.ca_bundle):
        raise ConfigError(f"compose.ca_bundle: {c.ca_bundle}: no such file")


SSH_ADDRESSES = ("public", "private")
SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")


def _test_network(s: Settings) -> None:
    t = s.test
    if t.ssh_address not in SSH_ADDRESSES:
        raise ConfigError(f"test.ssh_address: must be one of {', '.join(SSH_ADDRESSES)}")
    used = {s.aws.base_region, *s.aws.regions}
    for region in t.subnet_ids:
        key = f"test.subnet_ids.{region}"
        if region not in used:
            raise ConfigError(f"{key}: not a region in aws.base_region or aws.regions")
        subnets = t.subnets_in(region)
        if not subnets:
            raise ConfigError(f"{key}: names no subnet")
        for subnet in subnets:
            if not SUBNET_RE.match(subnet):
                raise ConfigError(f"{key}: {subnet!r} is not a subnet id (subnet-...)")


def _ssh_cidr(t: TestSettings) -> None:
    """A valid CIDR, or empty (required where the EC2 boot test is built); never world-open by
    default."""
    if not t.ssh_cidr:
        return
    try:
        network = ipaddress.ip_network(t.ssh_cidr, strict=False)
    except ValueError:
        raise ConfigError(f"test.ssh_cidr: {t.ssh_cidr!r} is not a CIDR block") from None
    if network.prefixlen == 0 and not t.allow_ssh_from_anywhere:
        raise ConfigError(
            f"test.ssh_cidr: {t.ssh_cidr} opens the test instance's SSH to the whole internet; "
            "give the CIDR fedimg connects from, or set test.allow_ssh_from_anywhere = true"
        )
