"""EC2 rules of the strict stand-in (images, copies, instances, tags, permissions, deprecation).

``install()`` puts the handlers of the ``ec2_*`` modules on moto's EC2 response class: new ones
for the actions moto lacks, wrappers or replacements for the ones it does too laxly.
"""

from __future__ import annotations

from fedimg.standins.aws import (
    ec2_account,
    ec2_deprecation,
    ec2_images,
    ec2_import,
    ec2_instances,
    ec2_lifecycle,
    ec2_sharing,
    iam_model,
)
from fedimg.standins.aws.ec2_tags import checked_create_tags, checked_tag_specifications

# moto's handler method name -> ours (the action in snake case, as moto dispatches).
HANDLERS = {
    "register_image": ec2_images.register_image,
    "copy_image": ec2_images.copy_image,
    "describe_image_attribute": ec2_images.describe_image_attribute,
    "enable_image_deprecation": ec2_deprecation.enable_image_deprecation,
    "disable_image_deprecation": ec2_deprecation.disable_image_deprecation,
    "modify_snapshot_attribute": ec2_sharing.modify_snapshot_attribute,
    "get_image_block_public_access_state": ec2_sharing.get_image_block_public_access_state,
    "enable_image_block_public_access": ec2_sharing.enable_image_block_public_access,
    "disable_image_block_public_access": ec2_sharing.disable_image_block_public_access,
    "get_snapshot_block_public_access_state": ec2_sharing.get_snapshot_block_public_access_state,
    "enable_snapshot_block_public_access": ec2_sharing.enable_snapshot_block_public_access,
    "disable_snapshot_block_public_access": ec2_sharing.disable_snapshot_block_public_access,
}


def install() -> None:
    """Patches moto's EC2 handlers and models with the rules (called once, by ``aws.install``)."""
    from moto.ec2.responses import EC2Response

    for name, handler in HANDLERS.items():
        setattr(EC2Response, name, handler)
    wrappers = {
        "create_tags": checked_create_tags,
        "modify_image_attribute": ec2_sharing.modify_image_attribute,
        "run_instances": ec2_instances.run_instances,
    }
    for name, wrap in wrappers.items():
        setattr(EC2Response, name, wrap(getattr(EC2Response, name)))
    for name, action in (
        ("create_security_group", "CreateSecurityGroup"),
        ("import_key_pair", "ImportKeyPair"),
    ):
        setattr(EC2Response, name, checked_tag_specifications(action, getattr(EC2Response, name)))
    ec2_images.patch_models()
    ec2_account.install()
    ec2_lifecycle.install()
    iam_model.install()
    ec2_import.install()
