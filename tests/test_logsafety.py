"""Credentials are masked in every log record, whichever handler or logger writes it."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from fedimg import logsafety

ACCESS_KEY = "AKIAFEDIMGLOGTEST123"
SECRET_KEY = "fedimg-log-test-secret-key/0123456789abcd"
SIGNED = (
    f"Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/us-east-1/ec2/aws4_request, "
    "SignedHeaders=host, Signature=0123456789abcdef"
)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    before = logging.getLogRecordFactory()
    logsafety.install()
    yield
    logging.setLogRecordFactory(before)


@pytest.fixture
def late_handler() -> Iterator[io.StringIO]:
    """A handler added after install(), on a logger that does not propagate to the root."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("fedimg.test.late")
    logger.addHandler(handler)
    logger.propagate = False
    yield out
    logger.removeHandler(handler)
    logger.propagate = True


def test_a_handler_added_after_install_writes_masked_lines(
    installed: None, late_handler: io.StringIO
) -> None:
    logger = logging.getLogger("fedimg.test.late")
    logger.warning("sending %s", SIGNED)
    logger.warning("secret is %s", SECRET_KEY)

    written = late_handler.getvalue()
    assert ACCESS_KEY not in written and SECRET_KEY not in written
    assert "0123456789abcdef" not in written
    assert written.count(logsafety.MASK) >= 3
    assert "SignedHeaders=host" in written  # the rest of the line is kept


def test_a_traceback_is_masked_too(installed: None, late_handler: io.StringIO) -> None:
    try:
        raise RuntimeError(f"request failed: {SIGNED}")
    except RuntimeError:
        logging.getLogger("fedimg.test.late").exception("boom")

    written = late_handler.getvalue()
    assert "RuntimeError: request failed" in written
    assert ACCESS_KEY not in written


def test_installing_twice_wraps_the_factory_once(installed: None) -> None:
    factory = logging.getLogRecordFactory()
    logsafety.install()
    assert logging.getLogRecordFactory() is factory


def test_a_record_that_cannot_be_formatted_still_reaches_the_handler(
    installed: None, late_handler: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)  # the handler reports, quietly
    logging.getLogger("fedimg.test.late").warning("%d items", "many")  # must not raise here
    logging.getLogger("fedimg.test.late").warning("after")
    assert "after" in late_handler.getvalue()
