"""Making AMIs and snapshots public: one attribute per call, block public access, the quota."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult, EmptyResult

from fedimg.standins.aws import ec2_rules as rules
from fedimg.standins.aws import options
from fedimg.standins.aws.ec2_state import UNBLOCKED, region_state
from fedimg.standins.aws.errors import refuse

PUBLIC = {"Group": "all"}
IMAGE_BLOCKING = ("block-new-sharing",)
SNAPSHOT_BLOCKING = ("block-all-sharing", "block-new-sharing")


def attributes_named(self: Any) -> set[str]:
    """The AMI attributes a ModifyImageAttribute request names, by Attribute or by parameter."""
    p = self._get_param
    named = {str(p("Attribute"))} if p("Attribute") else set()
    by_parameter = {
        "description": p("Description"),
        "imdsSupport": p("ImdsSupport"),
        "launchPermission": p("LaunchPermission")
        or p("UserGroups")
        or p("UserIds")
        or p("OrganizationArns")
        or p("OrganizationalUnitArns"),
    }
    return named | {name for name, given in by_parameter.items() if given}


def check_one_attribute(named: set[str]) -> None:
    """API_ModifyImageAttribute.html: "You can specify only one attribute at a time" (AWS
    answers ``InvalidParameterCombination``; none at all is ``MissingParameter``)."""
    if not named:
        refuse("MissingParameter", "The request must contain the parameter Attribute")
    if len(named) > 1:
        refuse(
            "InvalidParameterCombination",
            f"Only one attribute can be modified at a time, not {', '.join(sorted(named))}",
        )


def check_image_sharing_allowed(backend: Any) -> None:
    """API_EnableImageBlockPublicAccess.html: block-new-sharing "will block any attempt to publicly
    share your AMIs". The reference names no code; AWS answers ``OperationNotPermitted``."""
    if region_state(backend).image_block_public_access in IMAGE_BLOCKING:
        refuse(
            "OperationNotPermitted",
            "You can't publicly share this image because block public access for AMIs is "
            "enabled for this account",
        )


def check_public_quota(backend: Any) -> None:
    """The "Public AMIs" service quota per region (options.public_ami_quota(); off by default).
    AWS answers ``ResourceLimitExceeded``."""
    quota = options.public_ami_quota()
    public = sum(1 for a in backend.amis.values() if a.is_public)
    if quota and public >= quota:
        refuse("ResourceLimitExceeded", f"You have reached your quota of {quota} public AMIs")


def modify_image_attribute(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """ModifyImageAttribute (API_ModifyImageAttribute.html) with its rules; moto's handler does
    the launch permissions."""

    def handler(self: Any) -> Any:
        named = attributes_named(self)
        check_one_attribute(named)
        backend = self.ec2_backend
        ami = backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
        attribute = named.pop()
        if attribute == "launchPermission":
            if PUBLIC in _permissions_added(self) and not ami.is_public:
                check_image_sharing_allowed(backend)
                check_public_quota(backend)
            result = original(self)
            _default_public_deprecation(ami)
            return result
        self.error_on_dryrun()
        value = self._get_param("Value")
        if attribute == "description":
            value = (self._get_param("Description") or {}).get("Value", value)
            rules.check_description(value)
            ami.description = value
        elif attribute == "imdsSupport":
            value = (self._get_param("ImdsSupport") or {}).get("Value", value)
            rules.check_choice("ImdsSupport", value, rules.V2)
            ami.imds_support = value
        else:
            refuse("InvalidParameterValue", f"Attribute {attribute} cannot be modified")
        return EmptyResult()

    return handler


def _permissions_added(self: Any) -> list[dict[str, str]]:
    p = self._get_param
    added = list((p("LaunchPermission") or {}).get("Add", []))
    if p("OperationType") == "add":
        added += [{"Group": g} for g in p("UserGroups", [])]
    return added


def _default_public_deprecation(ami: Any) -> None:
    """ami-deprecate.html: "By default, the deprecation date of all public AMIs is set to two
    years from the AMI creation date"."""
    if ami.is_public and not getattr(ami, "deprecation_time", None):
        created = ami.creation_date
        ami.deprecation_time = rules.format_time(rules.years_after(created, 2))


def modify_snapshot_attribute(self: Any) -> ActionResult:
    """ModifySnapshotAttribute (API_ModifySnapshotAttribute.html), createVolumePermission given
    by GroupNames/UserIds + OperationType or by CreateVolumePermission Add/Remove."""
    p = self._get_param
    backend = self.ec2_backend
    snapshot = backend.get_snapshot(p("SnapshotId"))
    add, remove = _volume_permission_changes(self)
    if PUBLIC in add and "all" not in snapshot.create_volume_permission_groups:
        check_snapshot_can_be_public(backend, snapshot)
    self.error_on_dryrun()
    for change, apply in ((add, backend.add_create_volume_permission),
                          (remove, backend.remove_create_volume_permission)):  # fmt: skip
        user_ids = [c["UserId"] for c in change if "UserId" in c]
        groups = [c["Group"] for c in change if "Group" in c]
        if user_ids or groups:
            apply(snapshot.id, user_ids=user_ids, groups=groups)
    return EmptyResult()


def _volume_permission_changes(self: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    p = self._get_param
    structure = p("CreateVolumePermission") or {}
    add, remove = list(structure.get("Add", [])), list(structure.get("Remove", []))
    given = [{"Group": g} for g in p("GroupNames", [])] + [{"UserId": u} for u in p("UserIds", [])]
    (add if p("OperationType") == "add" else remove).extend(given if p("OperationType") else [])
    return add, remove


def check_snapshot_can_be_public(backend: Any, snapshot: Any) -> None:
    """API_ModifySnapshotAttribute.html: "Encrypted snapshots ... cannot be made public" (AWS
    answers ``UnsupportedOperation``); API_EnableSnapshotBlockPublicAccess.html: while blocked,
    "users can no longer request public sharing" (no code documented; AWS answers
    ``OperationNotPermitted`` as for AMIs)."""
    if snapshot.encrypted:
        refuse("UnsupportedOperation", "Encrypted snapshots can't be shared publicly")
    if region_state(backend).snapshot_block_public_access in SNAPSHOT_BLOCKING:
        refuse(
            "OperationNotPermitted",
            "You can't publicly share this snapshot because block public access for snapshots "
            "is enabled for this account",
        )


# Block public access, per region: API_{Get,Enable,Disable}ImageBlockPublicAccess{State,}.html and
# API_{Get,Enable,Disable}SnapshotBlockPublicAccess{State,}.html. The reference says a change can
# take up to 10 minutes to show; the stand-in applies it at once.


def get_image_block_public_access_state(self: Any) -> ActionResult:
    state = region_state(self.ec2_backend).image_block_public_access
    return ActionResult({"ImageBlockPublicAccessState": state, "ManagedBy": "account"})


def enable_image_block_public_access(self: Any) -> ActionResult:
    value = self._get_param("ImageBlockPublicAccessState")
    rules.check_choice("ImageBlockPublicAccessState", value, IMAGE_BLOCKING)
    self.error_on_dryrun()
    region_state(self.ec2_backend).image_block_public_access = value
    return ActionResult({"ImageBlockPublicAccessState": value})


def disable_image_block_public_access(self: Any) -> ActionResult:
    self.error_on_dryrun()
    region_state(self.ec2_backend).image_block_public_access = UNBLOCKED
    return ActionResult({"ImageBlockPublicAccessState": UNBLOCKED})


def get_snapshot_block_public_access_state(self: Any) -> ActionResult:
    state = region_state(self.ec2_backend).snapshot_block_public_access
    return ActionResult({"State": state, "ManagedBy": "account"})


def enable_snapshot_block_public_access(self: Any) -> ActionResult:
    value = self._get_param("State")
    rules.check_choice("State", value, SNAPSHOT_BLOCKING)
    self.error_on_dryrun()
    region_state(self.ec2_backend).snapshot_block_public_access = value
    return ActionResult({"State": value})


def disable_snapshot_block_public_access(self: Any) -> ActionResult:
    self.error_on_dryrun()
    region_state(self.ec2_backend).snapshot_block_public_access = UNBLOCKED
    return ActionResult({"State": UNBLOCKED})
