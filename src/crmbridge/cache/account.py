"""The `crm_account` table: which CRM account a cache holds (one cache, one account)."""

from __future__ import annotations

from typing import Any

from crmbridge.cache.tables import Tables
from crmbridge.errors import CacheError

_CRM_NAMES = {"bitrix24": "Bitrix24", "amocrm": "amoCRM"}


class Account:
    """The one row of `crm_account`."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    def get(self) -> dict[str, Any] | None:
        """The account this cache holds (crm, account host, ...), or None before the first sync."""
        rows = self.cache.query("SELECT * FROM crm_account WHERE id = 1")
        return rows[0] if rows else None

    def claim(self, crm: str, account: str, claimed_at: str, **details: Any) -> dict[str, Any]:
        """Mark the cache as holding `account` of `crm`; refuse when it already holds another one.

        A cache written before the marker existed holds Bitrix24 data and is claimed by its first sync.
        `details` (account_id, name, timezone, currency, filter_enabled, raw) are updated on every claim.
        """
        with self.cache.atomic():
            held = self.get()
            if held is not None and (held["crm"], held["account"]) != (crm, account):
                raise CacheError(
                    f"{self.cache.path or 'the cache'} holds the {_CRM_NAMES.get(held['crm'], held['crm'])} account "
                    f"{held['account']}, not the {_CRM_NAMES.get(crm, crm)} account {account}",
                    hint="point CRMBRIDGE_CACHE_PATH at another file for this account (one cache per account), "
                         "or check CRMBRIDGE_CRM",
                )
            row = {"id": 1, "crm": crm, "account": account,
                   "claimed_at": held["claimed_at"] if held else claimed_at,
                   **{key: value for key, value in details.items() if value is not None}}
            self.cache.db["crm_account"].upsert(row, pk="id")
        return self.get() or row

    def record_rights(self, admin: bool, checked_at: str) -> None:
        """What `user.admin` answered for the user the reads run as (a sync asks at its start)."""
        with self.cache.atomic():
            self.cache.db.execute("UPDATE crm_account SET webhook_admin = ?, rights_checked_at = ? WHERE id = 1",
                                  [int(admin), checked_at])

    def rights(self) -> bool | None:
        """True when the last sync found the webhook's user to be an administrator, False when not, None unknown."""
        held = self.get()
        value = held.get("webhook_admin") if held else None
        return None if value is None else bool(value)

    def check(self, crm: str) -> None:
        """Refuse to read a cache of another CRM than the one configured (CRMBRIDGE_CRM)."""
        held = self.get()
        if held is not None and held["crm"] != crm:
            raise CacheError(
                f"{self.cache.path or 'the cache'} holds the {_CRM_NAMES.get(held['crm'], held['crm'])} account "
                f"{held['account']}, but CRMBRIDGE_CRM is {crm}",
                hint="set CRMBRIDGE_CRM to the cache's CRM, or point CRMBRIDGE_CACHE_PATH at this CRM's cache",
            )
