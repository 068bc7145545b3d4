"""The benchmarks run on the strict AWS stand-in and keep their output contract: the last line is
one JSON object with the keys other programs read. Small sizes: this checks that they work, not
how fast (their figures come from full runs, see the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def last_json(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_upload_bench_prints_its_contract() -> None:
    r = last_json("upload.py", "--size", "64M", "--skip-naive", "--methods")
    assert r["bytes_sent"] == r["nonzero_bytes"] > 0
    assert {"ratio_to_floor", "peak_rss_mib", "decompress_threads"} <= r.keys()
    # S3 + ImportSnapshot sends the whole disk, EBS direct only its non-zero blocks
    methods = r["methods"]
    assert methods["import-snapshot"]["bytes_sent"] > methods["ebs-direct"]["bytes_sent"] > 0


def test_pipeline_bench_prints_its_contract() -> None:
    r = last_json("pipeline.py", "--image-mib", "4")
    assert r["images"] == 2
    assert r["region_scaling"] > 0 and r["api_calls_per_other_region"] > 0


@pytest.mark.slow
def test_e2e_bench_prints_its_contract() -> None:
    r = last_json("e2e.py", "--scale", "0.002", "--image-mib", "4")
    keys = {
        "sequential_s",
        "serial_stages_s",
        "overlapped_s",
        "critical_path_s",
        "ratio_to_critical_path",
        "speedup_vs_sequential",
    }
    assert keys <= r.keys()
    assert r["sequential_s"] > r["overlapped_s"] > 0
