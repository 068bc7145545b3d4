"""RegisterImage, CopyImage and what reads AMIs back, as AWS documents them.

moto registers every AMI with a fake 15 GiB snapshot of its own and drops the attributes; here an
AMI keeps the block device mappings and attributes it was given (a copy: its source's, with new
snapshots in the destination region), has a unique name, its tags from TagSpecifications, and is
invisible for ``options.visibility_delay()`` seconds after it was made. With the time model on
(``timing``), a new AMI is ``pending`` for its modelled registration or copy time, and a copy's
snapshots with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import InvalidAMIIdError, InvalidSnapshotInUse
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.utils import random_ami_id

from fedimg.standins.aws import ec2_rules as rules
from fedimg.standins.aws import timing
from fedimg.standins.aws.ec2_state import fingerprint, is_visible, mark_new, region_state
from fedimg.standins.aws.ec2_tags import tag_specifications, tags_for
from fedimg.standins.aws.errors import refuse

# The attributes AWS keeps on an AMI (RegisterImage's parameter -> moto ``Ami`` attribute).
ATTRIBUTES = {
    "Architecture": "architecture",
    "BootMode": "boot_mode",
    "ImdsSupport": "imds_support",
    "TpmSupport": "tpm_support",
    "EnaSupport": "ena_support",
    "SriovNetSupport": "sriov_net_support",
    "VirtualizationType": "virtualization_type",
    "RootDeviceName": "root_device_name",
}
CHOICES = {
    "Architecture": rules.ARCHITECTURES,
    "BootMode": rules.BOOT_MODES,
    "ImdsSupport": rules.V2,
    "TpmSupport": rules.V2,
    "SriovNetSupport": rules.SRIOV,
    "VirtualizationType": rules.VIRTUALIZATION_TYPES,
}
# API_RegisterImage.html: "Architecture ... Default: For Amazon EBS-backed AMIs, i386";
# "VirtualizationType ... Default: paravirtual".
DEFAULTS = {"Architecture": "i386", "VirtualizationType": "paravirtual"}


def register_image(self: Any) -> ActionResult:
    """RegisterImage (API_RegisterImage.html) with its documented rules."""
    p = self._get_param
    name = p("Name")
    rules.check_ami_name(name)
    rules.check_description(p("Description"))
    for parameter, allowed in CHOICES.items():
        rules.check_choice(parameter, p(parameter), allowed)
    rules.check_tpm_needs_uefi(p("TpmSupport"), p("BootMode"))
    specs = tag_specifications(self, "RegisterImage")
    backend = self.ec2_backend
    mappings = [_mapping(backend, m) for m in p("BlockDeviceMappings", [])]
    attributes = {attr: p(param, DEFAULTS.get(param)) for param, attr in ATTRIBUTES.items()}
    self.error_on_dryrun()
    with region_state(backend).lock:
        rules.check_ami_name_unique(name, _live_names(backend))
        ami = _new_ami(backend, name, p("Description"), attributes, mappings)
        timing.start_register(ami)
    ami.add_tags(tags_for(specs, "image"))
    return ActionResult({"ImageId": ami.id})


def copy_image(self: Any) -> ActionResult:
    """CopyImage (API_CopyImage.html): ClientToken idempotency, a new AMI with new snapshots.

    The reference asks no unique name of CopyImage (only RegisterImage and CreateImage), so none
    is enforced here.
    """
    p = self._get_param
    rules.check_ami_name(p("Name"))
    rules.check_description(p("Description"))
    specs = tag_specifications(self, "CopyImage")
    token, request = p("ClientToken"), fingerprint(self.params)
    backend = self.ec2_backend
    self.error_on_dryrun()
    state = region_state(backend)
    with state.lock:
        if token in state.copy_tokens:
            return ActionResult({"ImageId": _same_request(state.copy_tokens[token], request)})
        source = _source_backend(backend, p("SourceRegion")).describe_images(
            ami_ids=[p("SourceImageId")]
        )[0]
        ami = _copy(backend, source, p("Name"), p("Description"), tags_for(specs, "snapshot"))
        if token:
            state.copy_tokens[token] = (request, ami.id)
    tags = tags_for(specs, "image")
    if p("CopyImageTags"):
        source_tags = source.ec2_backend.tags.get(source.id, {})
        user_tags = {k: v for k, v in source_tags.items() if not k.startswith("aws:")}
        tags = user_tags | tags
    rules.check_tags(tags)
    ami.add_tags(tags)
    return ActionResult({"ImageId": ami.id})


def _same_request(seen: tuple[str, str], request: str) -> str:
    """API_CopyImage.html, ClientToken (ec2 "Ensuring idempotency"): the same token with other
    parameters is ``IdempotentParameterMismatch``; with the same ones, the first result."""
    first_request, result = seen
    if first_request != request:
        refuse(
            "IdempotentParameterMismatch",
            "The client token was already used with different request parameters",
        )
    return result


def _mapping(backend: Any, mapping: dict[str, Any]) -> dict[str, Any]:
    """A BlockDeviceMapping as AWS keeps it: the given snapshot (API_EbsBlockDevice.html)."""
    ebs = mapping.get("Ebs")
    if ebs is None:
        return dict(mapping)
    snapshot_id = ebs.get("SnapshotId")
    snapshot = backend.snapshots.get(snapshot_id) if snapshot_id else None
    if snapshot is not None:
        timing.settle(snapshot)
    if snapshot_id and snapshot is None:
        refuse("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
    if snapshot is not None and snapshot.status != "completed":
        # Known AWS answer for a snapshot that is still pending.
        refuse("IncorrectState", f"Snapshot {snapshot_id} is in invalid state - {snapshot.status}")
    snapshot_gib = int(snapshot.volume_size) if snapshot is not None else 1
    volume_gib = int(ebs.get("VolumeSize") or snapshot_gib)
    rules.check_volume_fits_snapshot(mapping["DeviceName"], volume_gib, snapshot_gib)
    rules.check_choice("VolumeType", ebs.get("VolumeType"), rules.VOLUME_TYPES)
    return {
        "DeviceName": mapping["DeviceName"],
        "Ebs": {
            "SnapshotId": snapshot_id,
            "VolumeSize": volume_gib,
            # API_EbsBlockDevice.html: "Default: gp2"; DeleteOnTermination defaults to true.
            "VolumeType": ebs.get("VolumeType") or "gp2",
            "DeleteOnTermination": bool(ebs.get("DeleteOnTermination", True)),
            "Encrypted": bool(snapshot.encrypted) if snapshot is not None else False,
        },
    }


def _live_names(backend: Any) -> list[str]:
    return [a.name for a in backend.amis.values() if a.owner_id == backend.account_id]


def _new_ami(
    backend: Any,
    name: str,
    description: str | None,
    attributes: dict[str, Any],
    mappings: list[dict[str, Any]],
) -> Any:
    ami: Any = Ami(backend, random_ami_id(), name=name, description=description)
    # Ami() always makes a fake snapshot of its own; AWS uses the mappings' snapshots.
    backend.snapshots.pop(ami.ebs_snapshot.id, None)
    for attr, value in attributes.items():
        setattr(ami, attr, value)
    ami.sriov = ami.sriov_net_support
    ami.root_device_type = "ebs"
    ami.mappings = mappings
    ami.deprecation_time = None
    ami.deregistration_protection = "disabled"
    root = next((m for m in mappings if m["DeviceName"] == ami.root_device_name), None)
    if root and root.get("Ebs", {}).get("SnapshotId"):
        ami.ebs_snapshot = backend.snapshots[root["Ebs"]["SnapshotId"]]
    mark_new(ami)
    backend.amis[ami.id] = ami
    return ami


def _copy(backend: Any, source: Any, name: str, description: str | None, snap_tags: Any) -> Any:
    """The copy: the source's attributes, each snapshot copied into this region."""
    mappings = []
    copies = []  # (source snapshot, its copy)
    for m in _mappings_of(source):
        m = {**m, "Ebs": dict(m["Ebs"])} if "Ebs" in m else dict(m)
        if m.get("Ebs", {}).get("SnapshotId"):
            snap = backend.copy_snapshot(
                m["Ebs"]["SnapshotId"],
                source.ec2_backend.region_name,
                f"Copied for DestinationAmi from SourceAmi {source.id}",
                None,
            )
            snap.add_tags(snap_tags)
            copies.append((source.ec2_backend.snapshots[m["Ebs"]["SnapshotId"]], snap))
            m["Ebs"]["SnapshotId"] = snap.id
        mappings.append(m)
    attributes = {attr: getattr(source, attr, None) for attr in ATTRIBUTES.values()}
    ami = _new_ami(backend, name, description or source.description, attributes, mappings)
    ami.source_image_id = source.id
    ami.source_image_region = source.ec2_backend.region_name
    timing.start_copy(ami, backend.region_name, copies)
    return ami


def _mappings_of(ami: Any) -> list[dict[str, Any]]:
    return list(ami.block_device_mappings)


def _source_backend(backend: Any, region: str | None) -> Any:
    from moto.ec2.models import ec2_backends

    if not region:
        refuse("MissingParameter", "The request must contain the parameter SourceRegion")
    return ec2_backends[backend.account_id][region]


def describe_image_attribute(self: Any) -> ActionResult:
    """DescribeImageAttribute (API_DescribeImageAttribute.html) from the AMI's stored values.

    ``blockDeviceMapping`` answers ``AuthFailure`` as the reference documents (moto does too).
    """
    attribute = self._get_param("Attribute")
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    if attribute == "blockDeviceMapping":
        refuse("AuthFailure", "Unauthorized attempt to access restricted resource")
    values = {
        "description": ami.description,
        "bootMode": ami.boot_mode,
        "imdsSupport": getattr(ami, "imds_support", None),
        "tpmSupport": getattr(ami, "tpm_support", None),
        "sriovNetSupport": getattr(ami, "sriov_net_support", ami.sriov),
        "deregistrationProtection": getattr(ami, "deregistration_protection", "disabled"),
        "kernel": ami.kernel_id,
    }
    result: dict[str, Any] = {"ImageId": ami.id}
    if attribute == "launchPermission":
        result["LaunchPermissions"] = ami.launch_permissions
    elif attribute == "productCodes":
        result["ProductCodes"] = [
            {"ProductCodeId": c, "ProductCodeType": "marketplace"} for c in ami.product_codes
        ]
    elif attribute in values:
        if values[attribute] is not None:
            result[attribute] = {"Value": values[attribute]}
    else:
        refuse("InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid")
    return ActionResult(result)


def patch_models() -> None:
    """Makes moto's AMI and snapshot models keep and enforce what AWS does."""
    original_mappings: Any = Ami.block_device_mappings

    def block_device_mappings(ami: Any) -> list[dict[str, Any]]:
        if hasattr(ami, "mappings"):
            return list(ami.mappings)
        return list(original_mappings.fget(ami))

    Ami.block_device_mappings = property(block_device_mappings)  # type: ignore[method-assign,assignment]
    AmiBackend.describe_images = _visible_only(AmiBackend.describe_images)  # type: ignore[method-assign]
    timing.patch_models()
    EBSBackend.delete_snapshot = _refuse_in_use(EBSBackend.delete_snapshot)  # type: ignore[method-assign]


def _visible_only(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    def describe_images(backend: Any, ami_ids: list[str] | None = None, **kw: Any) -> list[Any]:
        """Eventual consistency (ec2 "Eventual consistency"): a new AMI is unknown by id and
        absent from filtered results until its window has passed; every caller of this lookup
        (CreateTags, ModifyImageAttribute, CopyImage's source …) sees the same. An AMI whose
        modelled registration or copy time has passed is ``available`` (``timing``) before any
        filter looks at its state."""
        for ami in list(backend.amis.values()):
            timing.settle(ami)
        hidden = [i for i in ami_ids or [] if i in backend.amis and not is_visible(backend.amis[i])]
        if hidden:
            raise InvalidAMIIdError(hidden)
        return [a for a in original(backend, ami_ids=ami_ids, **kw) if is_visible(a)]

    return describe_images


def _refuse_in_use(original: Callable[..., Any]) -> Callable[..., Any]:
    def delete_snapshot(backend: Any, snapshot_id: str) -> Any:
        """API_DeleteSnapshot.html: "You cannot delete a snapshot of the root device of an EBS
        volume used by a registered AMI" (``InvalidSnapshot.InUse``)."""
        for ami in backend.amis.values():
            if any(m.get("Ebs", {}).get("SnapshotId") == snapshot_id for m in _mappings_of(ami)):
                raise InvalidSnapshotInUse(snapshot_id, ami.id)
        return original(backend, snapshot_id)

    return delete_snapshot
