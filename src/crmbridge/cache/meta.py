"""The `cache_meta` table: facts about the cache file itself (e.g. that `crmbridge demo` created it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crmbridge.cache.tables import Tables


class Meta:
    """name -> value facts about the file."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def set(self, name: str, value: str) -> None:
        with self.cache.atomic():
            self.cache.db.execute("INSERT INTO cache_meta (name, value) VALUES (?, ?) "
                                  "ON CONFLICT(name) DO UPDATE SET value = excluded.value", [name, value])

    def get(self, name: str) -> str | None:
        rows = list(self.cache.db.execute("SELECT value FROM cache_meta WHERE name = ?", [name]))
        return rows[0][0] if rows else None
