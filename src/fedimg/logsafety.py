"""Keeps AWS credentials out of every log line fedimg's processes write.

fedimg never logs credentials itself, but botocore's debug output (``fedimg -vv``) includes the
signed ``Authorization`` header, which names the access key id. This filter, installed on the root
logger's handlers, masks the credentials in the environment and any SigV4 credential scope or
signature, whoever logged them.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "****"
_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_PATTERNS = (
    re.compile(r"(Credential=)[^,\s'\"]+"),
    re.compile(r"(Signature=)[0-9a-f]+"),
    re.compile(r"((?:X-Amz-Security-Token|x-amz-security-token)['\"]?[:=]\s*['\"]?)[^'\",\s]+"),
    re.compile(r"()\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with credentials masked; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact(text: str) -> str:
    for name in _ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def install() -> None:
    """Adds the filter to every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
