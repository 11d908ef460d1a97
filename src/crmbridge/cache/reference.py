"""The portal's reference lists: `pipelines`, `stages`, `deal_fields` and `users`, read whole by every sync."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crmbridge.cache.tables import Tables

Row = dict[str, Any]


@dataclass(frozen=True)
class ReferenceRows:
    """The reference lists as rows (the shape `PortalSnapshot.from_rows` reads)."""

    pipelines: list[Row]
    stages: list[Row]
    fields: list[Row]
    users: list[Row]
    departments: list[Row]  # id, name, head_id (empty when the webhook lacks the department scope)


class Reference:
    """Pipelines, stages, deal fields and users."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def replace(self, pipelines: Iterable[Row], stages: Iterable[Row], fields: Iterable[Row],
                users: Iterable[Row]) -> tuple[int, int, int, int]:
        """One transaction; a pipeline, stage or field deleted on the portal disappears here too (check --live
        then names it as missing instead of trusting a stale copy). Users are kept: old deals name them."""
        with self.cache.atomic():
            return (self.cache.replace_all("pipelines", pipelines), self.cache.replace_all("stages", stages),
                    self.cache.replace_all("deal_fields", fields), self.cache.upsert("users", users))

    def rows(self) -> ReferenceRows:
        return ReferenceRows(
            self.cache.query("SELECT id, name, sort FROM pipelines"),
            self.cache.query("SELECT status_id, category_id, name, sort, semantics FROM stages"),
            self.cache.query("SELECT field_name, user_type_id, label, options FROM deal_fields"),
            self.cache.query("SELECT id, name, last_name, active, departments FROM users"),
            self.cache.query("SELECT id, name, head_id FROM departments"),
        )

    def has_stages(self) -> bool:
        return bool(self.cache.query("SELECT 1 FROM stages LIMIT 1"))

    def users(self) -> list[Row]:
        """id, name, last_name, active of every cached user."""
        return self.cache.query("SELECT id, name, last_name, active FROM users")

    def user_names(self) -> dict[str, str]:
        """User id -> "Name Last name"."""
        return {str(row["id"]): " ".join(part for part in (row["name"], row["last_name"]) if part)
                for row in self.users()}
