"""What every fedimg message shares: the application name and reusable schema pieces.

Bodies allow properties the schema does not name, so a v1 schema can gain optional fields without
breaking consumers that validate with an older copy of this package.
"""

from __future__ import annotations

from typing import Any

from fedora_messaging import message

SCHEMA_URL = "https://fedoraproject.org/message-schema/fedimg"
JSON_SCHEMA = "http://json-schema.org/draft-07/schema#"

AMI_ID: dict[str, Any] = {"type": "string", "pattern": "^ami-[0-9a-f]{8,32}$"}
SNAPSHOT_ID: dict[str, Any] = {"type": "string", "pattern": "^snap-[0-9a-f]{8,32}$"}
REGION: dict[str, Any] = {"type": "string", "pattern": "^[a-z]{2}(-[a-z]+)+-[0-9]+$"}
# Region name → AMI id in that region.
REGION_AMIS: dict[str, Any] = {
    "type": "object",
    "propertyNames": REGION,
    "additionalProperties": AMI_ID,
}
NONEMPTY: dict[str, Any] = {"type": "string", "minLength": 1}
STATUSES = ("started", "completed", "failed")


def schema(
    topic: str, description: str, properties: dict[str, Any], **rules: Any
) -> dict[str, Any]:
    """A body schema for ``topic``: an object with ``properties``, all of them required.

    ``rules`` adds JSON-Schema keywords (``allOf`` for status-dependent requirements…);
    ``optional`` names properties that may be absent.
    """
    optional = set(rules.pop("optional", ()))
    return {
        "$id": f"{SCHEMA_URL}/v1/{topic}",
        "$schema": JSON_SCHEMA,
        "description": description,
        "type": "object",
        "properties": properties,
        "required": sorted(set(properties) - optional),
        **rules,
    }


def required_when(status: str, *names: str) -> dict[str, Any]:
    """A rule: when the body's status is ``status``, ``names`` must be present."""
    return {
        "if": {"properties": {"status": {"const": status}}, "required": ["status"]},
        "then": {"required": list(names)},
    }


class FedimgMessage(message.Message):
    """Base of fedimg's messages; never sent itself (it has no entry point)."""

    @property
    def app_name(self) -> str:
        return "fedimg"

    @property
    def app_icon(self) -> str:
        return "https://apps.fedoraproject.org/img/icons/fedimg.png"
