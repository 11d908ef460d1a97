"""The local SQLite cache: a documented schema a person can query with `sqlite3` or Datasette."""

from crmbridge.cache.store import SCHEMA_VERSION, Cache, open_cache

__all__ = ["SCHEMA_VERSION", "Cache", "open_cache"]
