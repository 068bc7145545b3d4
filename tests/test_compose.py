"""Discovery on real Fedora metadata (F41, F42 GA), its error cases, and discovery over HTTP."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedimg import compose
from fedimg.compose import ComposeImage, discover, dry_run
from fedimg.config import ComposeSettings
from fedimg.errors import InputError, TransientError
from fedimg.standins.samplecompose import serve_directory

FIXTURES = Path(__file__).parent / "fixtures" / "composes"
F41 = "Fedora-41-20241024.0"
F42 = "Fedora-42-20250409.0"
DEFAULT = ComposeSettings()

# What Fedora published: the two EC2 images of each GA compose.
EXPECTED = {
    F41: [
        (
            "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-41-1.4.x86_64.raw.xz",
            "x86_64",
            "5d3b0829c1928bddcb0b78cb3232c417ca0f1fcf108ff41e73a3e9c2f7556e91",
            505453192,
        ),
        (
            "Cloud/aarch64/images/Fedora-Cloud-Base-AmazonEC2-41-1.4.aarch64.raw.xz",
            "aarch64",
            "bcd7820d624804c12e8b911d0f5a4f3e357a51757126b7e7cb1d9777d96dbda5",
            473845932,
        ),
    ],
    F42: [
        (
            "Cloud/x86_64/images/Fedora-Cloud-Base-AmazonEC2-42-1.1.x86_64.raw.xz",
            "x86_64",
            "a3bbb6aeae4a85658b21ac2b4e5511eb9f6f2dc53383b054855f9264dbe63585",
            541542268,
        ),
        (
            "Cloud/aarch64/images/Fedora-Cloud-Base-AmazonEC2-42-1.1.aarch64.raw.xz",
            "aarch64",
            "99278672b8d9ab707170139e518cd0cf162ba0f7969d15b097372eaafe695903",
            506233516,
        ),
    ],
}
EC2_X86 = EXPECTED[F41][0][0]


def location(compose_id: str) -> str:
    return str(FIXTURES / compose_id / "compose")


def summary(images: list[ComposeImage]) -> list[tuple[str, str, str, int]]:
    return [(i.path, i.arch, i.sha256, i.size) for i in images]


@pytest.mark.parametrize("compose_id", [F41, F42])
def test_real_compose_selects_exactly_the_two_ec2_images(compose_id: str) -> None:
    info, images = discover(location(compose_id), DEFAULT)

    assert summary(images) == EXPECTED[compose_id]
    assert info.compose_id == compose_id
    assert info.location == location(compose_id)
    for image in images:
        assert (image.variant, image.subvariant, image.type) == ("Cloud", "Cloud_Base", "raw-xz")
        assert image.url == str(FIXTURES / compose_id / "compose" / image.path)
        assert image.image_name == Path(image.path).name.removesuffix(".raw.xz")


def test_real_compose_has_many_other_raw_xz_disks() -> None:
    data = json.loads((FIXTURES / F41 / "compose/metadata/images.json").read_text())
    raw_xz = [
        image
        for arches in data["payload"]["images"].values()
        for listed in arches.values()
        for image in listed
        if image["type"] == "raw-xz"
    ]
    assert len(raw_xz) > 10  # so selecting two of them is a real choice


def test_compose_info_fields_and_metadata_for_resultsdb() -> None:
    info, images = discover(location(F41), DEFAULT)

    assert (info.release_short, info.release_version, info.release_type) == ("Fedora", "41", "ga")
    assert (info.compose_type, info.date, info.respin, info.label) == (
        "production",
        "20241024",
        0,
        "RC-1.4",
    )
    assert info.metadata["payload"]["compose"]["id"] == F41
    assert info.as_productmd().compose.id == F41
    assert images[0].metadata["path"] == images[0].path
    assert images[0].metadata["disc_number"] == 1


def test_configured_arches_change_the_selection() -> None:
    _, images = discover(location(F41), ComposeSettings(arches=("x86_64",)))

    assert summary(images) == EXPECTED[F41][:1]


def test_configured_subvariant_and_type_change_the_selection() -> None:
    server = ComposeSettings(subvariants=("Server",), arches=("aarch64",))
    azure = ComposeSettings(types=("vhd-compressed",))

    _, server_images = discover(location(F41), server)
    _, azure_images = discover(location(F41), azure)

    assert [i.path for i in server_images] == [
        "Server/aarch64/images/Fedora-Server-41-1.4.aarch64.raw.xz"
    ]
    assert [i.path for i in azure_images] == [
        "Cloud/x86_64/images/Fedora-Cloud-Base-Azure-41-1.4.x86_64.vhdfixed.xz",
        "Cloud/aarch64/images/Fedora-Cloud-Base-Azure-41-1.4.aarch64.vhdfixed.xz",
    ]
    assert azure_images[0].image_name == "Fedora-Cloud-Base-Azure-41-1.4.x86_64"


def test_dry_run_gives_exactly_the_documented_fields() -> None:
    report = dry_run(location(F41), DEFAULT)

    assert report["compose_id"] == F41
    assert [set(i) for i in report["images"]] == [
        {"path", "arch", "subvariant", "type", "sha256", "size"}
    ] * 2
    assert json.loads(json.dumps(report)) == report


def test_compose_top_dir_and_file_url_are_accepted() -> None:
    top = str(FIXTURES / F41)
    file_url = (FIXTURES / F41 / "compose").as_uri()

    top_info, top_images = discover(top, DEFAULT)
    url_info, url_images = discover(file_url, DEFAULT)

    assert top_info.location == url_info.location == location(F41)
    assert summary(top_images) == summary(url_images) == EXPECTED[F41]


# A copy of the F41 metadata to break in one place.


@pytest.fixture
def broken(tmp_path: Path) -> Callable[..., str]:
    def make(
        *,
        ec2: Callable[[dict[str, Any]], None] | None = None,
        images: str | None = None,
        composeinfo: str | None = None,
    ) -> str:
        target = tmp_path / "compose"
        shutil.copytree(FIXTURES / F41 / "compose", target)
        meta = target / "metadata"
        if ec2 is not None:
            data = json.loads((meta / "images.json").read_text())
            for entry in data["payload"]["images"]["Cloud"]["x86_64"]:
                if entry["path"] == EC2_X86:
                    ec2(entry)
            (meta / "images.json").write_text(json.dumps(data))
        if images is not None:
            (meta / "images.json").write_text(images)
        if composeinfo is not None:
            (meta / "composeinfo.json").write_text(composeinfo)
        return str(target)

    return make


def test_selection_uses_metadata_not_file_names(broken: Callable[..., str]) -> None:
    def rename(entry: dict[str, Any]) -> None:
        entry["path"] = "Cloud/x86_64/images/disk.raw.xz"

    _, images = discover(broken(ec2=rename), DEFAULT)

    assert [i.path for i in images if i.arch == "x86_64"] == ["Cloud/x86_64/images/disk.raw.xz"]


def test_ec2_named_file_of_another_subvariant_is_not_selected(broken: Callable[..., str]) -> None:
    def retag(entry: dict[str, Any]) -> None:
        entry["subvariant"] = "Server"

    _, images = discover(broken(ec2=retag), DEFAULT)

    assert [i.arch for i in images] == ["aarch64"]


@pytest.mark.parametrize(
    "location_",
    ["ftp://example.org/compose", "s3://bucket/compose", "", "http:///compose"],
)
def test_unsupported_location_is_input_error(location_: str) -> None:
    with pytest.raises(InputError, match="compose location"):
        discover(location_, DEFAULT)


def test_missing_directory_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such directory"):
        discover(str(tmp_path / "nope"), DEFAULT)
    with pytest.raises(InputError, match="no such directory"):
        discover((tmp_path / "nope").as_uri(), DEFAULT)


def test_missing_composeinfo_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()

    with pytest.raises(InputError, match=r"composeinfo\.json: no such file"):
        discover(str(tmp_path), DEFAULT)


def test_missing_images_json_is_input_error(broken: Callable[..., str]) -> None:
    where = broken()
    Path(where, "metadata/images.json").unlink()

    with pytest.raises(InputError, match=r"images\.json: no such file"):
        discover(where, DEFAULT)


@pytest.mark.parametrize("which", ["images", "composeinfo"])
def test_invalid_json_is_input_error(broken: Callable[..., str], which: str) -> None:
    with pytest.raises(InputError, match=rf"{which}\.json: not valid JSON"):
        discover(broken(**{which: "{not json"}), DEFAULT)


@pytest.mark.parametrize("which", ["images", "composeinfo"])
def test_json_that_is_not_productmd_is_input_error(broken: Callable[..., str], which: str) -> None:
    with pytest.raises(InputError, match=rf"{which}\.json: invalid productmd metadata"):
        discover(broken(**{which: '{"header": {"version": "1.2"}}'}), DEFAULT)


def test_images_of_another_compose_is_input_error(broken: Callable[..., str]) -> None:
    other = (FIXTURES / F42 / "compose/metadata/images.json").read_text()

    with pytest.raises(InputError, match=f"is for compose {F42}"):
        discover(broken(images=other), DEFAULT)


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../outside.raw.xz", "Cloud/../../../outside.raw.xz", "Cloud\\..\\x.raw.xz"],
)
def test_image_path_outside_compose_is_input_error(broken: Callable[..., str], path: str) -> None:
    def escape(entry: dict[str, Any]) -> None:
        entry["path"] = path

    with pytest.raises(InputError, match="not inside the compose directory"):
        discover(broken(ec2=escape), DEFAULT)


@pytest.mark.parametrize("checksums", [{"md5": "0" * 32}, {"sha256": "abc"}])
def test_missing_sha256_is_input_error(
    broken: Callable[..., str], checksums: dict[str, str]
) -> None:
    def drop(entry: dict[str, Any]) -> None:
        entry["checksums"] = checksums

    with pytest.raises(InputError, match="no valid sha256"):
        discover(broken(ec2=drop), DEFAULT)


@pytest.mark.parametrize("size", ["505453192", 1.5, True, 0, -1])
def test_size_not_a_whole_number_is_input_error(broken: Callable[..., str], size: Any) -> None:
    def bad_size(entry: dict[str, Any]) -> None:
        entry["size"] = size

    # productmd rejects some of these itself; either way the message names the size.
    with pytest.raises(InputError, match="size"):
        discover(broken(ec2=bad_size), DEFAULT)


def test_unsupported_arch_is_input_error() -> None:
    with pytest.raises(InputError, match="unsupported architecture 'ppc64le'"):
        discover(location(F41), ComposeSettings(arches=("x86_64", "ppc64le")))


def test_image_listed_under_another_arch_is_input_error(broken: Callable[..., str]) -> None:
    where = broken()
    images_json = Path(where, "metadata/images.json")
    data = json.loads(images_json.read_text())
    cloud = data["payload"]["images"]["Cloud"]
    # The aarch64 EC2 image moved under x86_64.
    aarch64 = [e for e in cloud["aarch64"] if "AmazonEC2" in e["path"]]
    cloud["aarch64"].remove(aarch64[0])
    cloud["x86_64"].append(aarch64[0])
    images_json.write_text(json.dumps(data))

    with pytest.raises(InputError, match="listed under arch x86_64 but its arch is aarch64"):
        discover(where, DEFAULT)


# Over HTTP.


def test_discovery_over_http_gives_absolute_urls() -> None:
    with serve_directory(FIXTURES) as base:
        info, images = discover(f"{base}/{F42}/compose/", DEFAULT)

    assert info.location == f"{base}/{F42}/compose"
    assert summary(images) == EXPECTED[F42]
    assert [i.url for i in images] == [f"{base}/{F42}/compose/{i.path}" for i in images]


def test_http_compose_top_dir_is_accepted() -> None:
    with serve_directory(FIXTURES) as base:
        info, images = discover(f"{base}/{F41}", DEFAULT)

    assert info.location == f"{base}/{F41}/compose"
    assert summary(images) == EXPECTED[F41]


def test_http_404_is_input_error(tmp_path: Path) -> None:
    with serve_directory(tmp_path) as base, pytest.raises(InputError, match=r"HTTP 404") as e:
        discover(f"{base}/compose", DEFAULT)

    assert not isinstance(e.value, TransientError)
    assert "composeinfo.json" in str(e.value)


def test_http_invalid_json_is_input_error(broken: Callable[..., str], tmp_path: Path) -> None:
    broken(images="<html>oops</html>")

    with serve_directory(tmp_path) as base, pytest.raises(InputError, match="not valid JSON"):
        discover(f"{base}/compose", DEFAULT)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.

    with pytest.raises(TransientError, match="cannot fetch metadata"):
        discover(f"http://127.0.0.1:{port}/compose", DEFAULT)


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """/status/NNN/…: answers HTTP NNN; /slow/…: answers late; /loop/…: redirects to itself;
    /to/PORT/…: redirects to … on loopback port PORT."""

    def do_GET(self) -> None:
        if self.path.startswith("/to/"):
            port, path = self.path[len("/to/") :].split("/", 1)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/{path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/status/"):
            self.send_error(int(self.path.split("/")[2]))
        elif self.path.startswith("/slow/"):
            time.sleep(1.0)
            # The client has given up by now.
            with contextlib.suppress(OSError):
                self.send_error(404)
        elif self.path.startswith("/loop/"):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(400)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def misbehaving_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, TransientError),
        (408, TransientError),  # Request Timeout
        (425, TransientError),  # Too Early
        (429, TransientError),  # Too Many Requests
        (403, InputError),  # any other 4xx: the location's fault
    ],
)
def test_http_5xx_and_not_now_answers_are_transient(status: int, error: type[Exception]) -> None:
    with misbehaving_server() as base, pytest.raises(error, match=f"HTTP {status}"):
        discover(f"{base}/status/{status}/compose", DEFAULT)


def test_http_timeout_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose, "HTTP_TIMEOUT", (1.0, 0.2))

    with misbehaving_server() as base, pytest.raises(TransientError, match="timed out"):
        discover(f"{base}/slow/compose", DEFAULT)


def test_http_redirect_loop_is_input_error() -> None:
    with misbehaving_server() as base, pytest.raises(InputError, match="redirects"):
        discover(f"{base}/loop/compose", DEFAULT)


@pytest.mark.parametrize("trusted", [True, False])
def test_http_redirects_are_followed_only_inside_the_trusted_locations(trusted: bool) -> None:
    with serve_directory(FIXTURES) as fixtures, misbehaving_server() as base:
        selection = ComposeSettings(trusted_locations=(f"{fixtures}/",) if trusted else ())
        location = f"{base}/to/{fixtures.rsplit(':', 1)[1]}/{F41}/compose"
        if trusted:
            assert len(discover(location, selection)[1]) == 2
        else:
            with pytest.raises(InputError, match=f"composeinfo.json redirects outside: .*{F41}"):
                discover(location, selection)


def test_plain_http_to_a_host_other_than_loopback_is_refused_before_fetching() -> None:
    with pytest.raises(InputError, match="plain http is allowed only to loopback"):
        discover("http://kojipkgs.fedoraproject.org/compose/x/compose", DEFAULT)


def test_identity_is_the_id_in_both_metadata_files() -> None:
    location = str(FIXTURES / F41 / "compose")
    assert compose.verify_identity(F41, location, DEFAULT).compose_id == F41
    with pytest.raises(InputError, match=f"message {F42}, composeinfo.json {F41}, images.json"):
        compose.verify_identity(F42, location, DEFAULT)


def test_http_other_4xx_is_input_error() -> None:
    with misbehaving_server() as base, pytest.raises(InputError, match="HTTP 400") as e:
        discover(f"{base}/other/compose", DEFAULT)

    assert not e.value.retryable


# Real composes that do not fit productmd's schema: the real F41/F42 metadata plus entries or keys
# productmd does not know yet.


def copy_of(compose_id: str, tmp_path: Path) -> Path:
    target = tmp_path / compose_id / "compose"
    shutil.copytree(FIXTURES / compose_id / "compose", target)
    return target


def edit(where: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = where / "metadata" / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def ec2_entry(data: dict[str, Any], arch: str = "x86_64") -> dict[str, Any]:
    entries: list[dict[str, Any]] = data["payload"]["images"]["Cloud"][arch]
    return next(e for e in entries if "AmazonEC2" in e["path"])


DROP = object()


def new_image(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """Adds, next to the x86_64 EC2 image, a copy of it changed by ``changes`` (DROP: removed)."""

    def add(data: dict[str, Any]) -> None:
        entry = {**ec2_entry(data), "path": "Cloud/x86_64/images/Fedora-Cloud-Base-New.x86_64.img"}
        entry["checksums"] = {"sha256": "1" * 64}
        entry.update(changes)
        data["payload"]["images"]["Cloud"]["x86_64"].append(
            {k: v for k, v in entry.items() if v is not DROP}
        )

    return add


REJECTED_BY_PRODUCTMD = {
    "unknown type": new_image(type="raw-zst", format="raw.zst"),
    "unknown format": new_image(type="raw-xz", format="raw.lz4", subvariant="Cloud_UKI"),
    "missing optional field": new_image(type="qcow2", format="qcow2", volume_id=DROP),
    "mistyped field": new_image(type="qcow2", format="qcow2", mtime="yesterday"),
}


@pytest.mark.parametrize("compose_id", [F41, F42])
@pytest.mark.parametrize("case", list(REJECTED_BY_PRODUCTMD))
def test_an_entry_productmd_rejects_is_skipped_with_a_warning_naming_it(
    compose_id: str, case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = copy_of(compose_id, tmp_path)
    edit(where, "images.json", REJECTED_BY_PRODUCTMD[case])

    _, images = discover(str(where), DEFAULT)

    assert summary(images) == EXPECTED[compose_id]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped image Cloud/x86_64 Cloud/x86_64/images/Fedora-Cloud-Base-New" in warning


def test_an_entry_under_an_unknown_arch_key_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = copy_of(F42, tmp_path)

    def add(data: dict[str, Any]) -> None:
        entry = {**ec2_entry(data), "arch": "x86_64_v3", "path": "Cloud/v3/images/x.raw.xz"}
        data["payload"]["images"]["Cloud"]["x86_64_v3"] = [entry, "not an object"]

    edit(where, "images.json", add)

    _, images = discover(str(where), DEFAULT)

    assert summary(images) == EXPECTED[F42]
    assert "skipped image Cloud/x86_64_v3 Cloud/v3/images/x.raw.xz" in caplog.text
    assert "skipped image Cloud/x86_64_v3 None: an entry is str, not an object" in caplog.text


def test_fields_productmd_does_not_know_are_accepted_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = copy_of(F41, tmp_path)
    edit(where, "images.json", lambda d: ec2_entry(d).update(uki=True, build_id=1234))
    edit(where, "composeinfo.json", lambda d: d.update(extra={"x": 1}))
    edit(where, "composeinfo.json", lambda d: d["payload"].update(builder={"name": "osbuild"}))
    edit(where, "composeinfo.json", lambda d: d["payload"]["compose"].update(kind="cloud"))

    info, images = discover(str(where), DEFAULT)

    assert summary(images) == EXPECTED[F41]
    assert images[0].metadata["uki"] is True  # as written, for ResultsDB
    assert info.compose_id == F41
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"mtime": DROP}, "missing field 'mtime'"),
        ({"format": "raw.lz4"}, "Image: Field 'format' has invalid value: raw.lz4"),
        ({"bootable": DROP}, "missing field 'bootable'"),
    ],
)
def test_an_entry_fedimg_would_select_is_still_validated_strictly(
    change: dict[str, Any], words: str, tmp_path: Path
) -> None:
    where = copy_of(F41, tmp_path)

    def spoil(data: dict[str, Any]) -> None:
        entry = ec2_entry(data)
        entry.update(change)
        for key in [k for k, v in change.items() if v is DROP]:
            del entry[key]

    edit(where, "images.json", spoil)

    with pytest.raises(InputError, match=f"image {EC2_X86}: invalid productmd metadata: {words}"):
        discover(str(where), DEFAULT)


def test_a_second_image_fedimg_would_select_in_its_place_is_an_error(tmp_path: Path) -> None:
    where = copy_of(F41, tmp_path)
    edit(where, "images.json", new_image())  # same subvariant, type, arch; another checksum

    with pytest.raises(InputError, match="shares all UNIQUE_IMAGE_ATTRIBUTES"):
        discover(str(where), DEFAULT)


def test_a_variant_productmd_rejects_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = copy_of(F42, tmp_path)
    edit(where, "composeinfo.json", lambda d: d["payload"]["variants"]["Labs"].update(type="spin"))

    info, images = discover(str(where), DEFAULT)

    assert summary(images) == EXPECTED[F42]
    assert "skipped variant Labs: Variant: Field 'type' has invalid value: spin" in caplog.text
    assert "Labs" not in info.as_productmd().variants.variants
    assert "Cloud" in info.as_productmd().variants.variants


def test_composeinfo_fields_fedimg_needs_stay_strict(tmp_path: Path) -> None:
    where = copy_of(F42, tmp_path)
    edit(where, "composeinfo.json", lambda d: d["payload"]["compose"].update(type="weekly"))

    with pytest.raises(InputError, match=r"composeinfo\.json: invalid productmd metadata"):
        discover(str(where), DEFAULT)
