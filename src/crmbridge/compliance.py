"""Edge: evaluate cached deals against the regulation and keep the `violations` ledger up to date."""

from __future__ import annotations

from collections.abc import Iterable

from crmbridge.cache.store import Cache
from crmbridge.model import Violation
from crmbridge.regulation.ledger import LedgerChanges, reconcile


def record_violations(cache: Cache, found: Iterable[Violation], now_iso: str,
                      evaluated_deals: set[str] | None = None) -> LedgerChanges:
    """Open new violations, refresh those still found, resolve those gone (of `evaluated_deals`, or of every
    deal when None); one transaction."""
    found = list(found)
    return cache.violations.record(lambda open_rows: reconcile(open_rows, found, now_iso, evaluated_deals), now_iso)
