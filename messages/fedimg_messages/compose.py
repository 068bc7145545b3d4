"""The message sent once every image of a compose is done, whatever each image's outcome."""

from __future__ import annotations

from typing import Any

from fedimg_messages.base import NONEMPTY, REGION_AMIS, FedimgMessage, schema

IMAGE_OUTCOMES = ("published", "failed", "test-failed")


class ComposeCompleteV1(FedimgMessage):
    """fedimg finished a compose: each image's outcome and, if published, its AMIs per region."""

    topic = "fedimg.compose.complete"
    body_schema = schema(
        topic,
        "fedimg finished every image of a compose.",
        {
            "compose_id": {
                **NONEMPTY,
                "description": "The compose, e.g. Fedora-Cloud-43-20251101.0",
            },
            "release": {"type": "string", "description": "The Fedora release ('43'), or ''."},
            "images": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "image_name": NONEMPTY,
                        "arch": {"type": "string"},
                        "subvariant": {"type": "string"},
                        "outcome": {"enum": list(IMAGE_OUTCOMES)},
                        "regions": {**REGION_AMIS, "description": "Region → AMI id."},
                        "error": {"type": "string"},
                    },
                    "required": ["image_name", "arch", "subvariant", "outcome", "regions"],
                },
            },
        },
    )

    @property
    def compose_id(self) -> str:
        return str(self.body["compose_id"])

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.body["images"])

    @property
    def published(self) -> list[dict[str, Any]]:
        return [i for i in self.images if i["outcome"] == "published"]

    @property
    def summary(self) -> str:
        return (
            f"fedimg finished compose {self.compose_id}: "
            f"{len(self.published)} of {len(self.images)} images published"
        )

    def __str__(self) -> str:
        text = f"{self.summary}\n\n"
        for image in self.images:
            regions = len(image["regions"])
            text += f"\t{image['image_name']} ({image['arch']}): {image['outcome']}"
            text += f", {regions} regions" if regions else ""
            text += f": {image['error']}" if image.get("error") else ""
            text += "\n"
        return text
