"""The local SQLite cache: a documented schema a person can query with `sqlite3` or Datasette.

All SQL of crmbridge lives in this package: one repository per table family (`deals`, `reference`,
`violations`, `sync_state`), reached as attributes of the open `Cache`.
"""

from crmbridge.cache.store import SCHEMA_VERSION, Cache, open_cache

__all__ = ["SCHEMA_VERSION", "Cache", "open_cache"]
