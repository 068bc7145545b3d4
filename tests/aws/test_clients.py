"""botocore's errors become fedimg's in one place, with whether a later attempt may succeed."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from fedimg.aws.clients import translate


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutSnapshotBlock")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status"),
    [("RequestThrottledException", 400), ("RequestLimitExceeded", 503), ("Whatever", 500)],
)
def test_throttling_and_server_errors_are_retryable(code: str, status: int) -> None:
    """EBS direct's per-snapshot throttle answers 400 RequestThrottledException: still transient."""
    assert translate(client_error(code, status), "put").retryable


def test_a_refused_request_is_not_retryable() -> None:
    error = translate(client_error("InvalidAMIName.Duplicate", 400), "register")
    assert not error.retryable
    assert str(error) == "register: InvalidAMIName.Duplicate: m"
