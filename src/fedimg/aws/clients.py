"""boto3 clients per region: endpoint override, explicit timeouts, and the one retry layer.

Retry budget (the only one in fedimg): botocore "standard" mode, ``aws.max_attempts`` attempts per
request including the first, exponential backoff with jitter capped at 20 s, on throttling, 5xx
and connection errors. fedimg's own code never loops around a failed request; it only waits for
*state* (snapshot completed, image available) with deadlines.

A region the account has not enabled (an opt-in region) answers every EC2 request ``AuthFailure``
(401), the answer bad credentials get too. When a region refuses the credentials, the base region
is asked once (DescribeRegions, AllRegions) whether the region is enabled; if it is not, the
error's message says so and how to fix it, so the failure names its cause wherever it surfaces.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

from fedimg.config import AwsSettings
from fedimg.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient

# Error codes that mean "try again later" rather than "this request is wrong".
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestThrottledException",  # EBS direct, per-snapshot request rate
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


# Answers meaning "these credentials are not accepted here": EC2's (AuthFailure, and OptInRequired
# for a service the account has not signed up for) and the JSON services' (SSM).
CREDENTIALS_REFUSED = frozenset(
    {"AuthFailure", "OptInRequired", "UnrecognizedClientException", "InvalidClientTokenId"}
)
# DescribeRegions' OptInStatus of a region the account may use.
ENABLED = frozenset({"opt-in-not-required", "opted-in"})


def region_not_enabled(region: str, status: str) -> str:
    return (
        f"region {region} is not enabled for this account (opt-in status {status}): enable it "
        f"(aws account enable-region --region-name {region}) or remove it from aws.regions"
    )


@dataclass
class Clients:
    """Lazily created, thread-safe cache of clients for one set of AWS settings."""

    settings: AwsSettings
    session: boto3.session.Session = field(default_factory=boto3.session.Session)
    _cache: dict[tuple[str, str], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _opt_in: dict[str, str] = field(default_factory=dict)  # region -> OptInStatus, once known
    _asking: threading.local = field(default_factory=threading.local)

    @property
    def pool_size(self) -> int:
        """Connections per client: one per upload or copy worker, and a few for the rest."""
        return max(self.settings.upload_workers, self.settings.copy_workers) + 4

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        with self._lock:
            if key not in self._cache:
                cfg = botocore.config.Config(
                    region_name=region,
                    connect_timeout=self.settings.connect_timeout,
                    read_timeout=self.settings.read_timeout,
                    retries={"mode": "standard", "total_max_attempts": self.settings.max_attempts},
                    max_pool_connections=self.pool_size,
                )
                client = self.session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.settings.endpoint_url or None,
                    config=cfg,
                )
                # once per request, after botocore's retries, before the error is raised
                client.meta.events.register(
                    "after-call", functools.partial(self._explain_refusal, region)
                )
                self._cache[key] = client
            return self._cache[key]

    def _explain_refusal(self, region: str, parsed: dict[str, Any], **_: Any) -> None:
        error = parsed.get("Error") or {}
        if error.get("Code") not in CREDENTIALS_REFUSED:
            return
        status = self.opt_in_status(region)
        if status and status not in ENABLED:
            error["Message"] = region_not_enabled(region, status)

    def opt_in_status(self, region: str) -> str:
        """``region``'s OptInStatus as another region's EC2 tells it (a region that is not
        enabled cannot tell); "" when that could not be asked. One request, remembered."""
        if region in self._opt_in:
            return self._opt_in[region]
        others = [r for r in (self.settings.base_region, *self.settings.regions) if r != region]
        if not others or getattr(self._asking, "now", False):  # no asking about the asking
            return ""
        self._asking.now = True
        try:
            found = self.ec2(others[0]).describe_regions(RegionNames=[region], AllRegions=True)
        except (ClientError, BotoCoreError):
            return ""
        finally:
            self._asking.now = False
        status = str(found["Regions"][0].get("OptInStatus", "")) if found["Regions"] else ""
        self._opt_in[region] = status
        return status

    def ec2(self, region: str) -> EC2Client:
        return self._client("ec2", region)  # type: ignore[no-any-return]

    def ebs(self, region: str) -> EBSClient:
        return self._client("ebs", region)  # type: ignore[no-any-return]

    def ssm(self, region: str) -> SSMClient:
        return self._client("ssm", region)  # type: ignore[no-any-return]

    def s3(self, region: str) -> Any:
        """S3 (typed loosely: the S3 stubs are not among the installed ones)."""
        return self._client("s3", region)


def error_code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def translate(err: BaseException, what: str) -> AwsError:
    """One place where botocore's errors become fedimg's: with context, and whether to retry."""
    if isinstance(err, ClientError):
        code = error_code(err)
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = err.response.get("Error", {}).get("Message", "")
        retryable = code in TRANSIENT_CODES or status >= 500
        return AwsError(f"{what}: {code or status}: {msg}".rstrip(": "), retryable=retryable)
    if isinstance(err, BotoCoreError):
        return AwsError(f"{what}: {err}", retryable=True)
    return AwsError(f"{what}: {err}", retryable=False)
