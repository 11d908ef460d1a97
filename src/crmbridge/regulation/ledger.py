"""The compliance history: which violations open, stay open or resolve after an evaluation (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from crmbridge.model import Violation


class RenderedRows(Sequence[dict[str, Any]]):
    """Rows rendered from violations when read: 45,000 messages and JSON texts are written, never held at once."""

    def __init__(self, items: Sequence[Any], render: Callable[[Any], dict[str, Any]]) -> None:
        self.items, self.render = items, render

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:  # type: ignore[override]
        if isinstance(index, slice):
            return [self.render(item) for item in self.items[index]]
        return self.render(self.items[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self.render, self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass
class LedgerChanges:
    """What to write to the `violations` table after one evaluation."""

    opened: Sequence[dict[str, Any]] = field(default_factory=list)  # new rows
    refreshed: Sequence[dict[str, Any]] = field(default_factory=list)  # still open: id + checked, severity, message, ...
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
        "entry": violation.entry_key,
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
              evaluated_deals: set[str] | None = None, refresh: set[str] | None = None) -> LedgerChanges:
    """Compare the open rows (by key) with this evaluation's violations.

    `evaluated_deals` limits resolving to the deals evaluated this time (None: every deal was evaluated,
    so an open row of a deal that is gone or no longer regulated resolves too). `refresh` limits rewriting the rows
    still open to these violation keys (None: all): those judged afresh, or whose time waited grew; a kept
    judgement's rows were written when it was made, and nothing else in them changed since (issue 7, item 15).
    """
    opened: list[Violation] = []
    refreshed: list[tuple[int, Violation]] = []
    resolved: list[int] = []
    seen: set[str] = set()
    for violation in found:
        key = violation.key
        if key in seen:
            continue
        seen.add(key)
        row = open_rows.get(key)
        if row is None:
            opened.append(violation)
        elif refresh is None or key in refresh:
            refreshed.append((int(row["id"]), violation))
    for key, row in open_rows.items():
        if key in seen:
            continue
        if evaluated_deals is None or str(row["deal_id"]) in evaluated_deals:
            resolved.append(int(row["id"]))
    return LedgerChanges(RenderedRows(opened, lambda violation: violation_row(violation, now_iso)),
                         RenderedRows(refreshed, lambda pair: refreshed_row(pair[0], pair[1], now_iso)), resolved)


def refreshed_row(row_id: int, violation: Violation, now_iso: str) -> dict[str, Any]:
    """What an evaluation rewrites of a violation still open (`id` is its row)."""
    return {"id": row_id, "checked": now_iso, "severity": violation.severity.value, "message": violation.message,
            "missing": _json(list(violation.missing)), "details": _json(dict(violation.details))}
