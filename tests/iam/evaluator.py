"""Runs evaluate.mjs (``@cloud-copilot/iam-simulate``, pinned in package-lock.json) with the
system's Node.js: one process for a whole batch of requests.

The package is installed with ``npm ci`` into tests/iam/node_modules the first time it is
needed (``make setup`` does not: only these tests use it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.iam.requests import ACCOUNT, PRINCIPAL

HERE = Path(__file__).resolve().parent
POLICY = HERE.parent.parent / "iam-policy.json"
LOCK = HERE / "package-lock.json"
STAMP = HERE / "node_modules" / ".fedimg-installed"  # the package-lock.json it was installed from
NPM_SECONDS = 300
EVALUATE_SECONDS = 120


def ensure_installed() -> None:
    """``npm ci`` once per package-lock.json (under a lock: several test processes may ask at the
    same time)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run scripts/install-system-deps.sh")
    with (HERE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = hashlib.sha256(LOCK.read_bytes()).hexdigest()
        if STAMP.exists() and STAMP.read_text() == wanted:
            return
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=NPM_SECONDS,
        )
        STAMP.write_text(wanted)


def policy() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(POLICY.read_text())
    return loaded


def evaluate(requests: list[dict[str, Any]], policy_doc: dict[str, Any] | None = None) -> list[str]:
    """The evaluator's verdict for each request: Allowed, ImplicitlyDenied, ExplicitlyDenied, or
    ``Error: …`` when the request or policy does not validate."""
    ensure_installed()
    batch = {
        "policy": policy_doc or policy(),
        "account": ACCOUNT,
        "principal": PRINCIPAL,
        "requests": requests,
    }
    done = subprocess.run(
        ["node", str(HERE / "evaluate.mjs")],
        input=json.dumps(batch),
        capture_output=True,
        text=True,
        check=True,
        timeout=EVALUATE_SECONDS,
    )
    answers = json.loads(done.stdout)
    return [a["result"] if a["result"] != "Error" else f"Error: {a['errors']}" for a in answers]
