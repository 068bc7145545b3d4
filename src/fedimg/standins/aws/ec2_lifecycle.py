"""An AMI's end of life as AWS documents it: disabling, deregistration protection, deregistering.

moto sets a disabled AMI's state but leaves its launch permissions and lists it everywhere; it has
no deregistration protection. Here:

- DisableImage (API_DisableImage.html): "Sets the AMI state to disabled and removes all launch
  permissions"; "A disabled AMI can't be shared"; it "does not appear in DescribeImages API calls
  by default" (DescribeImages ``IncludeDisabled``: "Default: No disabled AMIs are included").
  EnableImage (API_EnableImage.html): available again, and those who "lost access ... do not
  regain access automatically" (moto's own handler does exactly that once permissions are gone).
- EnableImageDeregistrationProtection (API_EnableImageDeregistrationProtection.html): "the AMI
  can't be deregistered"; ``WithCooldown`` "enforces deregistration protection for 24 hours after
  deregistration protection is disabled". DisableImageDeregistrationProtection
  (API_DisableImageDeregistrationProtection.html) lifts it, at once or after the cooldown.
  DescribeImages returns the state as ``DeregistrationProtection`` (``disabled``, ``enabled``,
  ``enabled-with-cooldown``, ``disabled-until <time>``, as the user guide's "Protect an AMI from
  deregistration" shows it).
- DeregisterImage of a protected AMI is refused. The reference names no error code; the stand-in
  answers ``OperationNotPermitted``, as AWS does for the other refusals of this kind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult

from fedimg.standins.aws import ec2_rules as rules
from fedimg.standins.aws.errors import refuse

DISABLED = "disabled"
ENABLED = "enabled"
ENABLED_WITH_COOLDOWN = "enabled-with-cooldown"
DISABLED_UNTIL = "disabled-until"
COOLDOWN = dt.timedelta(hours=24)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _ami(self: Any) -> Any:
    """The request's AMI, whatever its state (moto's lookup by id includes disabled ones)."""
    return self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]


def _owned(self: Any, ami: Any, action: str) -> None:
    """API_DisableImage.html / API_EnableImage.html: "Only the AMI owner can" do this."""
    if ami.owner_id != self.ec2_backend.account_id:
        refuse("AuthFailure", f"Only the owner of {ami.id} can call {action}")


def disable_image(self: Any) -> ActionResult:
    ami = _ami(self)
    _owned(self, ami, "DisableImage")
    self.error_on_dryrun()
    ami.launch_permissions.clear()
    ami.state = "disabled"
    return ActionResult({"Return": True})


def enable_image(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def handler(self: Any) -> Any:
        _owned(self, _ami(self), "EnableImage")
        return original(self)

    return handler


def protection(ami: Any) -> str:
    """The AMI's DeregistrationProtection now (a passed cooldown reads ``disabled``)."""
    value = str(getattr(ami, "deregistration_protection", None) or DISABLED)
    if value.startswith(DISABLED_UNTIL):
        until = dt.datetime.fromisoformat(value.split(" ", 1)[1].replace("Z", ""))
        if _now() >= until:
            return DISABLED
    return value


def is_protected(ami: Any) -> bool:
    return protection(ami) != DISABLED


def enable_image_deregistration_protection(self: Any) -> ActionResult:
    ami = _ami(self)
    cooldown = str(self._get_param("WithCooldown", False)).lower() == "true"
    self.error_on_dryrun()
    ami.deregistration_protection = ENABLED_WITH_COOLDOWN if cooldown else ENABLED
    return ActionResult({"Return": ami.deregistration_protection})


def disable_image_deregistration_protection(self: Any) -> ActionResult:
    ami = _ami(self)
    self.error_on_dryrun()
    if protection(ami) == ENABLED_WITH_COOLDOWN:
        until = rules.format_time(_now() + COOLDOWN)
        ami.deregistration_protection = f"{DISABLED_UNTIL} {until}"
    elif protection(ami) == ENABLED:
        ami.deregistration_protection = DISABLED
    return ActionResult({"Return": protection(ami)})


def deregister_image(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def handler(self: Any) -> Any:
        ami = self.ec2_backend.amis.get(self._get_param("ImageId"))
        if ami is not None and is_protected(ami):
            refuse(
                "OperationNotPermitted",
                f"The image {ami.id} has deregistration protection ({protection(ami)}); "
                "disable it before deregistering the image",
            )
        return original(self)

    return handler


def describe_images(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """DescribeImages without disabled AMIs unless ``IncludeDisabled``."""

    def handler(self: Any) -> Any:
        result = original(self)
        if str(self._get_param("IncludeDisabled", False)).lower() == "true":
            return result
        data = dict(result.result)
        data["Images"] = [i for i in data.get("Images", []) if i.state != "disabled"]
        return ActionResult(data)

    return handler


def no_sharing_while_disabled(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """API_DisableImage.html: "A disabled AMI can't be shared" (no code documented; AWS's
    answer for an AMI in the wrong state is ``InvalidAMIID.Unavailable``)."""

    def handler(self: Any) -> Any:
        ami = self.ec2_backend.amis.get(self._get_param("ImageId"))
        adding = (self._get_param("LaunchPermission") or {}).get("Add") or (
            self._get_param("OperationType") == "add"
        )
        if ami is not None and ami.state == "disabled" and adding:
            refuse("InvalidAMIID.Unavailable", f"The image {ami.id} is disabled")
        return original(self)

    return handler


def install() -> None:
    """Puts the lifecycle handlers on moto's EC2 responses (after ``ec2``'s own wrappers)."""
    from moto.ec2.responses import EC2Response

    setattr(EC2Response, "disable_image", disable_image)  # noqa: B010 - typed method
    for name, handler in (
        ("enable_image_deregistration_protection", enable_image_deregistration_protection),
        ("disable_image_deregistration_protection", disable_image_deregistration_protection),
    ):
        setattr(EC2Response, name, handler)
    for name, wrap in (
        ("enable_image", enable_image),
        ("deregister_image", deregister_image),
        ("describe_images", describe_images),
        ("modify_image_attribute", no_sharing_while_disabled),
    ):
        setattr(EC2Response, name, wrap(getattr(EC2Response, name)))
