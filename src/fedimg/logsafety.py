"""Keeps AWS credentials out of every log line fedimg's processes write.

fedimg never logs credentials itself, but botocore's debug output (``fedimg -vv``) includes the
signed ``Authorization`` header, which names the access key id. ``install()`` masks the
credentials in the environment and any SigV4 credential scope or signature in every log record
as it is made, whoever logged it: through the logging module's record factory, not a handler
filter, so handlers and loggers added later (by a library, a test, fedora-messaging) are
covered too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

MASK = "****"
_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_PATTERNS = (
    re.compile(r"(Credential=)[^,\s'\"]+"),
    re.compile(r"(Signature=)[0-9a-f]+"),
    re.compile(r"((?:X-Amz-Security-Token|x-amz-security-token)['\"]?[:=]\s*['\"]?)[^'\",\s]+"),
    re.compile(r"()\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)
_MARK = "_fedimg_redacts"
_install_lock = threading.Lock()


def redact(text: str) -> str:
    for name in _ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_record(record: logging.LogRecord) -> None:
    """Rewrites ``record``'s message, exception text and stack with credentials masked."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format is the handler's to report, not ours
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Formatters use exc_text when it is set, so the traceback is printed masked.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install() -> None:
    """Masks credentials in every log record made from now on, in this process (once)."""
    with _install_lock:
        make_record = logging.getLogRecordFactory()
        if getattr(make_record, _MARK, False):
            return

        def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            redact_record(record)
            return record

        setattr(redacting, _MARK, True)
        logging.setLogRecordFactory(redacting)
