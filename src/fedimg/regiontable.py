"""A compose's outcome as a table, image x region, read back from AWS (not from memory)."""

from __future__ import annotations

from rich.table import Table

from fedimg.aws.clients import Clients
from fedimg.pipeline import ComposeOutcome


def region_table(outcome: ComposeOutcome, clients: Clients) -> Table:
    """Image x region → AMI id, its architecture and boot mode, state, public."""
    table = Table(title=f"compose {outcome.compose_id}")
    for col in ("image", "region", "AMI", "arch", "boot mode", "state", "public"):
        table.add_column(col)
    for image in sorted(outcome.images, key=lambda i: i.image_name):
        if not image.regions:
            table.add_row(image.image_name, "-", "-", "-", "-", image.status, image.error[:60])
        for region, ami in sorted(image.regions.items()):
            ec2 = clients.ec2(region)
            held = ec2.describe_images(ImageIds=[ami])["Images"][0]
            perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
            public = "yes" if {"Group": "all"} in perms.get("LaunchPermissions", []) else "no"
            arch, mode = held.get("Architecture", "?"), held.get("BootMode", "?")
            table.add_row(image.image_name, region, ami, arch, mode, held.get("State", "?"), public)
    return table
