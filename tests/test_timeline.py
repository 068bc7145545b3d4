"""The timeline: stage events paired into spans, laid out per image, drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

from fedimg.events import Event
from fedimg.timeline import Span, TimelineRecorder, draw, lanes, spans

X86, ARM = "Fedora-Cloud-Base-AmazonEC2-42-1.1.x86_64", "Fedora-Cloud-Base-AmazonEC2-42-1.1.aarch64"

# One image: upload 0-10, copies 10-40 (us-west-2) and 10-25 (eu-west-1) during the test
# 10-20, publish 20-40; the other's upload failed at 5 with no start announced.
EVENTS = [
    (0.0, Event("upload", "started", X86, "us-east-1")),
    (5.0, Event("upload", "failed", ARM, "us-east-1")),
    (10.0, Event("upload", "completed", X86, "us-east-1")),
    (10.0, Event("copy", "started", X86, "us-west-2")),
    (10.0, Event("copy", "started", X86, "eu-west-1")),
    (10.0, Event("test", "started", X86, "us-east-1")),
    (20.0, Event("test", "completed", X86, "us-east-1")),
    (20.0, Event("publish", "started", X86, "us-east-1")),
    (25.0, Event("copy", "completed", X86, "eu-west-1")),
    (40.0, Event("copy", "completed", X86, "us-west-2")),
    (40.0, Event("publish", "completed", X86, "")),
    (41.0, Event("publish", "completed", X86, "")),  # a second end: ignored
]


def test_events_pair_into_spans_per_stage_and_region() -> None:
    assert sorted(spans(EVENTS), key=lambda s: (s.image, s.start, s.lane)) == [
        Span(ARM, "upload", "", 5.0, 5.0, failed=True),
        Span(X86, "upload", "", 0.0, 10.0),
        Span(X86, "copy", "eu-west-1", 10.0, 25.0),
        Span(X86, "copy", "us-west-2", 10.0, 40.0),
        Span(X86, "test", "", 10.0, 20.0),
        Span(X86, "publish", "", 20.0, 40.0),
    ]


def test_lanes_follow_the_pipeline_with_the_slowest_copy_last() -> None:
    assert lanes(spans(EVENTS)) == [
        (ARM, "upload"),
        (X86, "upload"),
        (X86, "test"),
        (X86, "copy eu-west-1"),
        (X86, "copy us-west-2"),
        (X86, "publish"),
    ]


def test_recorder_keeps_stage_events_with_their_arrival_time() -> None:
    now = iter([100.0, 101.5, 102.0, 103.0])
    recorder = TimelineRecorder(clock=lambda: next(now))
    recorder(Event("upload", "started", X86))
    recorder(Event("upload", "progress", X86))
    recorder(Event("upload", "completed", X86))
    recorder(Event("compose", "completed"))
    assert [(at, e.status) for at, e in recorder.events] == [(1.5, "started"), (2.0, "completed")]


def test_draw_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "timeline.png"
    draw(spans(EVENTS), out, "two images", seconds_per_unit=0.5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000  # bars, labels and axes, not an empty canvas


def test_compose_command_draws_the_timeline_of_its_run(aws: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fedimg.cli import main
    from tests.helpers import served_compose

    cfg = tmp_path / "fedimg.toml"
    cfg.write_text(
        f'[aws]\nendpoint_url = "{aws}"\nregions = ["us-east-1", "us-west-2"]\nmax_attempts = 2\n'
        "[test]\nenabled = false\n[messaging]\npublish = false\n"
    )
    out = tmp_path / "run.png"
    with served_compose(tmp_path, 8) as (location, _):
        r = CliRunner().invoke(
            main, ["--config", str(cfg), "compose", location, "--json", "--timeline", str(out)]
        )
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
