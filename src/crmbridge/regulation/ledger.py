"""The compliance history: which violations open, stay open or resolve after an evaluation (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from crmbridge.model import Violation


@dataclass
class LedgerChanges:
    """What to write to the `violations` table after one evaluation."""

    opened: list[dict[str, Any]] = field(default_factory=list)  # new rows
    refreshed: list[dict[str, Any]] = field(default_factory=list)  # still open: id + checked, severity, message, ...
    resolved: list[int] = field(default_factory=list)  # row ids no longer found


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def violation_row(violation: Violation, now_iso: str) -> dict[str, Any]:
    """A `violations` table row for a newly found violation."""
    return {
        "key": violation.key,
        "deal_id": int(violation.deal) if violation.deal.isdigit() else violation.deal,
        "rule": violation.rule,
        "direction": violation.direction,
        "stage": violation.stage,
        "entry": violation.entry.key if violation.entry is not None else None,
        "severity": violation.severity.value,
        "manager_id": int(violation.manager) if violation.manager and violation.manager.isdigit() else None,
        "opened": violation.since.isoformat(),
        "detected": now_iso,
        "checked": now_iso,
        "resolved": None,
        "missing": _json(list(violation.missing)),
        "message": violation.message,
        "details": _json(dict(violation.details)),
    }


def reconcile(open_rows: Mapping[str, Mapping[str, Any]], found: Iterable[Violation], now_iso: str,
              evaluated_deals: set[str] | None = None) -> LedgerChanges:
    """Compare the open rows (by key) with this evaluation's violations.

    `evaluated_deals` limits resolving to the deals evaluated this time (None: every deal was evaluated,
    so an open row of a deal that is gone or no longer regulated resolves too).
    """
    changes = LedgerChanges()
    seen: set[str] = set()
    for violation in found:
        key = violation.key
        if key in seen:
            continue
        seen.add(key)
        row = open_rows.get(key)
        if row is None:
            changes.opened.append(violation_row(violation, now_iso))
        else:
            changes.refreshed.append({"id": row["id"], "checked": now_iso, "severity": violation.severity.value,
                                      "message": violation.message, "missing": _json(list(violation.missing)),
                                      "details": _json(dict(violation.details))})
    for key, row in open_rows.items():
        if key in seen:
            continue
        if evaluated_deals is None or str(row["deal_id"]) in evaluated_deals:
            changes.resolved.append(int(row["id"]))
    return changes
