"""A run's timeline: each image's stages, and its copy to each region, against time.

``TimelineRecorder`` is an event sink that notes when each stage event arrived; ``spans`` pairs
each stage's ``started`` with its ``completed`` or ``failed``; ``draw`` makes the picture with
matplotlib (the optional extra ``fedimg[timeline]``, imported only here, when drawing). The
``compose --timeline FILE`` command and ``bench/e2e.py`` draw the same picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fedimg.errors import FedimgError
from fedimg.events import Event
from fedimg.outcomes import COMPLETED, STAGE_FAILED, STARTED

# Stages in the order their lanes are drawn for an image; copies are one lane per region.
STAGES = ("upload", "test", "copy", "publish")
COLOURS = {"upload": "#4c72b0", "test": "#dd8452", "copy": "#55a868", "publish": "#8172b3"}
FAILED_COLOUR = "#c44e52"


@dataclass(frozen=True)
class Span:
    """One stage of one image (and region, for copies) from its start to its end, in seconds
    from the first event."""

    image: str
    stage: str
    region: str
    start: float
    end: float
    failed: bool = False

    @property
    def lane(self) -> str:
        return f"copy {self.region}" if self.stage == "copy" else self.stage


class TimelineRecorder:
    """A sink: keeps each stage event with the time it arrived (progress is left out)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.events: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        if event.stage in STAGES and event.status in (STARTED, COMPLETED, STAGE_FAILED):
            self.events.append((self._clock() - self._start, event))


def spans(events: Iterable[tuple[float, Event]]) -> list[Span]:
    """Each started stage with its end; a stage that never ended is left out, an end with no
    start (a stage that failed before announcing itself) is a span of no length, and a second end
    of a stage that has ended is ignored."""
    open_: dict[tuple[str, str, str], float] = {}
    ended: set[tuple[str, str, str]] = set()
    result = []
    for at, e in sorted(events, key=lambda pair: pair[0]):
        key = (e.image, e.stage, e.region if e.stage == "copy" else "")
        if e.status == STARTED:
            open_[key] = at
            ended.discard(key)
        elif key in open_ or key not in ended:
            start = open_.pop(key, at)
            ended.add(key)
            result.append(Span(key[0], key[1], key[2], start, at, e.status == STAGE_FAILED))
    return result


def lanes(all_spans: Iterable[Span]) -> list[tuple[str, str]]:
    """(image, lane) from top to bottom: per image its stages in pipeline order, copies by the
    time they ended (the slowest region last)."""
    order = {s: n for n, s in enumerate(STAGES)}
    by_image: dict[str, dict[str, tuple[int, float]]] = {}
    for s in all_spans:
        rank = (order[s.stage], s.end if s.stage == "copy" else 0.0)
        by_image.setdefault(s.image, {})[s.lane] = rank
    return [
        (image, lane)
        for image in sorted(by_image)
        for lane, _ in sorted(by_image[image].items(), key=lambda item: item[1])
    ]


def check_drawable() -> None:
    """FedimgError unless matplotlib (the extra ``fedimg[timeline]``) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise FedimgError(
            "drawing a timeline needs matplotlib: pip install 'fedimg[timeline]'"
        ) from e


def draw(all_spans: list[Span], path: Path, title: str, seconds_per_unit: float = 1.0) -> None:
    """Writes the timeline as an image (format from the suffix: .png, .svg …). Time is shown in
    seconds divided by ``seconds_per_unit`` (a benchmark on the compressed time model shows AWS
    seconds: ``seconds_per_unit`` = the time scale)."""
    check_drawable()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = lanes(all_spans)
    index = {row: n for n, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.16 * len(rows)))
    try:
        for s in all_spans:
            y = index[(s.image, s.lane)]
            start, length = s.start / seconds_per_unit, (s.end - s.start) / seconds_per_unit
            colour = FAILED_COLOUR if s.failed else COLOURS[s.stage]
            shortest = 0.002 * _extent(all_spans) / seconds_per_unit  # instant stages stay visible
            ax.broken_barh([(start, max(length, shortest))], (y - 0.4, 0.8), facecolors=colour)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([_label(image, lane) for image, lane in rows], fontsize=6)
        ax.invert_yaxis()
        unit = "s" if seconds_per_unit == 1.0 else "AWS s"
        ax.set_xlabel(f"time since the first event ({unit})")
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(axis="x", linewidth=0.3)
        handles = [Patch(color=c, label=stage) for stage, c in COLOURS.items()]
        ax.legend(
            handles=handles,
            fontsize=7,
            ncol=len(handles),
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _extent(all_spans: list[Span]) -> float:
    return max((s.end for s in all_spans), default=1.0) or 1.0


def _label(image: str, lane: str) -> str:
    """The image's arch (its name's last part) rather than its long name."""
    arch = image.rsplit(".", 1)[-1] if "." in image else image
    return f"{arch}  {lane}"
