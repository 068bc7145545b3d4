"""A moto server on loopback: the local AWS stand-in, spoken to over real HTTP.

fedimg talks to it through exactly the code path it uses for AWS, with ``aws.endpoint_url`` set.
Both servers run with the strict rules of ``fedimg.standins.aws`` installed.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

# Dummy credentials for the stand-in; only set when the environment has none.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_dummy_credentials() -> None:
    for key, value in DUMMY_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    # Without this moto fabricates ~1300 public AMIs and snapshots per region.
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_in_process() -> Iterator[str]:
    """A threaded moto server in this process; yields its URL."""
    use_dummy_credentials()
    from moto.server import ThreadedMotoServer

    from fedimg.standins.aws import install

    install()

    # One access-log line per request, and a traceback for every call moto does not implement,
    # would drown fedimg's own output (fedimg reports those failures itself).
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def moto_subprocess(deadline: float = 30.0) -> Iterator[str]:
    """A moto server in its own process (its CPU use does not share our GIL); yields its URL."""
    use_dummy_credentials()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedimg.standins.aws", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, deadline)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2):  # noqa: S310
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"moto server at {url} not ready after {deadline}s") from None
            time.sleep(0.1)


def reset(url: str) -> None:
    """Forget every resource (between tests)."""
    req = urllib.request.Request(f"{url}/moto-api/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310
        pass
