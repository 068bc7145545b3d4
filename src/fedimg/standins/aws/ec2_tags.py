"""Tag rules wherever fedimg tags: CreateTags and every action's TagSpecifications."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedimg.standins.aws import ec2_rules as rules


def tag_specifications(self: Any, action: str) -> list[dict[str, Any]]:
    """The request's TagSpecifications, refused unless each names a ResourceType ``action``
    accepts and its tags obey the tag rules (per resource type, as each becomes one resource)."""
    specs = self._get_param("TagSpecifications") or self._get_param("TagSpecification") or []
    specs = [specs] if isinstance(specs, dict) else list(specs)
    rules.check_tag_specification_types(action, specs)
    for kind in {s.get("ResourceType") for s in specs}:
        rules.check_tags(tags_for(specs, str(kind)))
    return specs


def tags_for(specs: list[dict[str, Any]], kind: str) -> dict[str, str]:
    """The tags the specifications give resources of type ``kind``."""
    return {
        t["Key"]: t.get("Value") or ""
        for s in specs
        if s.get("ResourceType") == kind
        for t in s.get("Tags", [])
    }


def checked_create_tags(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """CreateTags (API_CreateTags.html): the resources must exist (and be visible), and each
    keeps at most 50 tags counting those it has."""

    def create_tags(self: Any) -> Any:
        resource_ids = self._get_param("Resources", [])
        backend = self.ec2_backend
        backend.do_resources_exist(resource_ids)
        tags = {t["Key"]: t.get("Value") or "" for t in self._get_param("Tags", [])}
        for resource_id in resource_ids:
            rules.check_tags(tags, existing=backend.tags.get(resource_id, {}).keys())
        return original(self)

    return create_tags


def checked_tag_specifications(action: str, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``original`` (moto's handler for ``action``) behind the TagSpecifications rules."""

    def handler(self: Any) -> Any:
        tag_specifications(self, action)
        return original(self)

    handler.__name__ = original.__name__
    return handler
