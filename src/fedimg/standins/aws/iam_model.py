"""The stand-in's IAM model: which actions the caller may do, answered as AWS answers them.

moto allows every request. Here one knob, ``options.denied_actions()``
(``FEDIMG_STANDIN_DENY="ec2:RegisterImage,ebs:StartSnapshot"``), takes actions away from the
caller, and every request passes one gate before moto's handler:

- a denied action is refused with the service's own error (EC2 ``UnauthorizedOperation``, 403;
  EBS direct, SSM and Service Quotas ``AccessDeniedException``; IAM ``AccessDenied``), for real
  calls and dry runs alike;
- an S3 request whose action (moto names each request by its IAM action: HeadObject is
  ``s3:GetObject``, UploadPart ``s3:PutObject``, ListParts ``s3:ListMultipartUploadParts``) is
  denied gets S3's ``AccessDenied`` (403, "Access Denied"; S3 API reference, "Error responses");
- an EC2 request with ``DryRun=true`` is answered ``DryRunOperation`` (412) when allowed, before
  the handler runs: "Checks whether you have the required permissions for the action, without
  actually making the request" (the DryRun parameter of every EC2 action). AWS validates the
  request's syntax first, which botocore already does; the stand-in answers from permissions
  alone, so a placeholder id in a dry run is never looked up here;
- an EC2 request in a region the account has not enabled (``options.disabled_regions()``) is
  refused ``AuthFailure`` (401): credentials are not valid in an opt-in region until it is
  enabled (Account Management reference, "Enable or disable AWS Regions in your account").

``iam:SimulatePrincipalPolicy``, which moto lacks, evaluates the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult, BaseResponse
from moto.s3.exceptions import S3ClientError

from fedimg.standins.aws import options
from fedimg.standins.aws.errors import refuse

# moto's service name -> the service prefix of IAM action names.
IAM_PREFIX = {"service-quotas": "servicequotas"}
# API_GetCallerIdentity.html: "No permissions are required to perform this operation."
NEVER_DENIED = frozenset({"sts:getcalleridentity"})
# service prefix -> (error code, HTTP status) of a refused request. EC2: "Common client error
# codes" (UnauthorizedOperation, 403); EBS direct: its model (AccessDeniedException, 403); IAM:
# "Common errors" (AccessDenied, 403); SSM and Service Quotas: "Common errors"
# (AccessDeniedException, 400).
DENIAL = {
    "ec2": ("UnauthorizedOperation", 403),
    "ebs": ("AccessDeniedException", 403),
    "iam": ("AccessDenied", 403),
    "sts": ("AccessDenied", 403),
    "ssm": ("AccessDeniedException", 400),
    "servicequotas": ("AccessDeniedException", 400),
    "s3": ("AccessDenied", 403),
}
DRY_RUN_STATUS = 412
AUTH_FAILURE_STATUS = 401
# The caller every stand-in request comes from (moto's default identity).
CALLER = "arn:aws:iam::123456789012:user/moto"


class Refusal(ServiceException):
    """An answer of the gate; defined here (not in a moto package) so that moto serializes it
    in the shape of the service the request went to."""


class S3AccessDenied(S3ClientError):
    """S3's refusal (moto's S3 handlers serialize their own S3ClientError subclasses)."""


def iam_action(prefix: str, action: str) -> str:
    return f"{prefix}:{action}"


def is_denied(action: str) -> bool:
    """Whether the IAM model takes ``action`` (``service:Action``) away from the caller."""
    lowered = action.lower()
    return lowered not in NEVER_DENIED and lowered in options.denied_actions()


def _answer(self: BaseResponse, error: ServiceException, status: int) -> Any:
    """``error`` in the service's own protocol shape, with AWS's HTTP status."""
    _, headers, body = self.serialized(ActionResult(error))
    headers, body = self._enrich_response(headers, body)
    headers["status"] = str(status)
    return status, headers, body


def _denial(prefix: str, action: str) -> Refusal:
    code, _ = DENIAL.get(prefix, ("AccessDenied", 403))
    error = Refusal(
        code,
        f"You are not authorized to perform this operation. User: {CALLER} is not authorized "
        f"to perform: {action} because no identity-based policy allows the {action} action",
    )
    if prefix == "ebs":
        error.Reason = "UNAUTHORIZED_ACCOUNT"  # type: ignore[attr-defined]  # a required member
    return error


def _is_dry_run(self: BaseResponse) -> bool:
    return str(self._get_param("DryRun", False)).lower() == "true"


def gated(call_action: Callable[[BaseResponse], Any]) -> Callable[[BaseResponse], Any]:
    """Wraps a response class's ``call_action`` with the gate described above."""

    def call(self: BaseResponse) -> Any:
        prefix = IAM_PREFIX.get(str(self.service_name), str(self.service_name))
        action = iam_action(prefix, self._get_action() or "")
        if prefix == "ec2" and self.region in options.disabled_regions():
            error = Refusal(
                "AuthFailure", "AWS was not able to validate the provided access credentials"
            )
            return _answer(self, error, AUTH_FAILURE_STATUS)
        if is_denied(action):
            return _answer(self, _denial(prefix, action), DENIAL.get(prefix, ("", 403))[1])
        if prefix == "ec2" and _is_dry_run(self):
            error = Refusal(
                "DryRunOperation", "Request would have succeeded, but DryRun flag is set."
            )
            return _answer(self, error, DRY_RUN_STATUS)
        return call_action(self)

    return call


def gated_s3(authorize: Callable[..., None]) -> Callable[..., None]:
    """Wraps moto's S3 authorization hook, which every S3 handler calls once it has named the
    request's action (``self.data["Action"]``)."""

    def check(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
        action = iam_action("s3", str(self.data.get("Action", "")))
        if is_denied(action):
            self.fedimg_refused = True  # answered with S3's status, see s3_status
            raise S3AccessDenied("AccessDenied", "Access Denied")
        authorize(self, bucket_name=bucket_name, key_name=key_name)

    return check


def s3_status(respond: Callable[..., Any]) -> Callable[..., Any]:
    """S3's model has no AccessDenied shape (a common error), so moto would answer it with 400;
    AWS answers 403."""

    def answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.fedimg_refused = False
        status, headers, body = respond(self, *args, **kwargs)
        if self.fedimg_refused:
            status = DENIAL["s3"][1]
            headers["status"] = str(status)
        return status, headers, body

    return answer


def simulate_principal_policy(self: Any) -> ActionResult:
    """SimulatePrincipalPolicy (IAM API_SimulatePrincipalPolicy.html): each of ``ActionNames``
    is ``allowed`` or ``implicitDeny`` by the model. ``PolicySourceArn`` must be the ARN of a
    user, group or role ("InvalidInput" otherwise); the stand-in does not look the entity up."""
    source = str(self._get_param("PolicySourceArn") or "")
    parts = source.split(":", 5)
    if (
        len(parts) != 6
        or parts[2] != "iam"
        or not parts[5].startswith(("user/", "group/", "role/"))
    ):
        refuse("InvalidInput", f"Invalid ARN {source!r}: not a user, group or role")
    resources = self._get_param("ResourceArns") or ["*"]
    results = [
        {
            "EvalActionName": action,
            "EvalResourceName": resource,
            "EvalDecision": "implicitDeny" if is_denied(action) else "allowed",
            "MatchedStatements": [],
            "MissingContextValues": [],
        }
        for action in self._get_param("ActionNames") or []
        for resource in resources
    ]
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


def install() -> None:
    """Puts the gate on every service fedimg and its preflight call."""
    from moto.ebs.responses import EBSResponse
    from moto.ec2.responses import EC2Response
    from moto.iam.responses import IamResponse
    from moto.servicequotas.responses import ServiceQuotasResponse
    from moto.ssm.responses import SimpleSystemManagerResponse
    from moto.sts.responses import TokenResponse

    for cls in (
        EC2Response,
        EBSResponse,
        SimpleSystemManagerResponse,
        IamResponse,
        ServiceQuotasResponse,
        TokenResponse,
    ):
        setattr(cls, "call_action", gated(cls.call_action))  # noqa: B010 - typed method
    setattr(IamResponse, "simulate_principal_policy", simulate_principal_policy)  # noqa: B010
    from moto.s3.responses import S3Response

    hook = "_authenticate_and_authorize_s3_action"
    setattr(S3Response, hook, gated_s3(getattr(S3Response, hook)))
    for handler in ("bucket_response", "key_response"):
        setattr(S3Response, handler, s3_status(getattr(S3Response, handler)))
    # AccessDenied is one of AWS's common errors, so IAM's model has no shape of its own for it;
    # moto warns about codes missing from the model unless they are listed as common.
    from moto.core import errors

    if "AccessDenied" not in errors.COMMON_ERROR_CODES:
        errors.COMMON_ERROR_CODES.append("AccessDenied")
