"""The audit's judgements kept between runs (`judged`) and the marks of deals whose inputs changed (`judge_marks`).

The marks are written by triggers on every table the mapping reads (migration 16), so no writer can forget one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from crmbridge.cache.meta import Meta
from crmbridge.cache.tables import Tables

_FINGERPRINT = "judged_fingerprint"
#: in place of a mapped deal: the one kept with the judgement stays as it is (the deal was judged again from it)
UNCHANGED = ""


class JudgedRow(NamedTuple):
    """One deal's kept judgement (times in microseconds since 1970, UTC)."""

    deal_id: int
    judged_at: int
    recheck_at: int | None
    client_key: str | None
    purchase_at: int | None


class Judged:
    """Reads within the audit's snapshot; writes within its transaction."""

    def __init__(self, cache: Tables) -> None:
        self.cache = cache

    # --- reads ------------------------------------------------------------------------------

    def fingerprint(self) -> str | None:
        """What the kept judgements were made with (the regulation, the binding, the code); None: none kept."""
        return Meta(self.cache).get(_FINGERPRINT)

    def last_mark(self) -> int:
        """The last mark ever written (AUTOINCREMENT's counter: it never goes back, even when the marks are cleared)."""
        row = self.cache.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'judge_marks'").fetchone()
        return int(row[0]) if row else 0

    def marked(self, up_to: int) -> set[int]:
        """Deals whose inputs changed since they were judged (marks up to `up_to`)."""
        return {deal_id for (deal_id,) in self.cache.db.execute(
            "SELECT DISTINCT deal_id FROM judge_marks WHERE seq <= ?", [up_to])}

    def rows(self) -> Iterator[JudgedRow]:
        """Every kept judgement, in deal id order, without its violations (`violations` reads those as it goes)."""
        for row in self.cache.db.execute(
                "SELECT deal_id, judged_at, recheck_at, client_key, purchase_at FROM judged ORDER BY deal_id"):
            yield JudgedRow(*row)

    def violations(self) -> Iterator[tuple[int, str]]:
        """(deal id, kept violations) of the judgements that found some, in deal id order: read as they are used,
        not all at once (100 MB of text at 100,000 deals)."""
        yield from self.cache.db.execute(
            "SELECT deal_id, violations FROM judged WHERE violations IS NOT NULL ORDER BY deal_id")

    def kept_deals(self, deal_ids: Iterable[int]) -> dict[int, str]:
        """The mapped deals (JSON) kept with these deals' judgements (those with a near horizon)."""
        wanted = sorted(deal_ids)
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            found.update(self.cache.db.execute(
                f"SELECT deal_id, deal FROM judged_deals WHERE deal_id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    # --- writes -----------------------------------------------------------------------------

    def compact_marks(self) -> int:
        """Keep one mark per deal, its latest: the audit asks of the marks only whether a deal changed after a point,
        so older ones say nothing more. Without it the marks would grow with every change a sync writes while no
        audit runs (the shipped jobs run none). Safe beside an audit in flight: its snapshot saw the marks it clears,
        and a later mark of the same deal stays. Returns how many went."""
        with self.cache.atomic():
            return int(self.cache.db.execute(
                "DELETE FROM judge_marks WHERE seq NOT IN (SELECT MAX(seq) FROM judge_marks GROUP BY deal_id)").rowcount)

    def save(self, rows: Iterable[Sequence[Any]], gone: Iterable[int], *, mark: int, fingerprint: str,
             rebuilt: bool) -> None:
        """Keep fresh judgements (deal_id, judged_at, recheck_at, client_key, purchase_at, violations, mapped deal or
        None) made from a snapshot that saw marks up to `mark`; forget those of deals `gone`; clear the marks it saw.
        `rebuilt`: every live deal was judged, so older judgements of deals not among `rows` go.

        A judgement from an older snapshot never replaces one from a newer (two audits at once)."""
        db = self.cache.db
        if rebuilt:
            db.execute("DELETE FROM judged_deals WHERE deal_id IN (SELECT deal_id FROM judged WHERE mark <= ?)", [mark])
            db.execute("DELETE FROM judged WHERE mark <= ?", [mark])
        mapped: list[tuple[int, str | None]] = []

        def judgements() -> Iterator[tuple[Any, ...]]:
            for *judgement, deal in rows:
                mapped.append((judgement[0], deal))
                yield (*judgement, mark)
        db.conn.executemany(
            "INSERT INTO judged (deal_id, judged_at, recheck_at, client_key, purchase_at, violations, mark) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (deal_id) DO UPDATE SET judged_at = excluded.judged_at, "
            "recheck_at = excluded.recheck_at, client_key = excluded.client_key, purchase_at = excluded.purchase_at, "
            "violations = excluded.violations, mark = excluded.mark WHERE excluded.mark >= judged.mark", judgements())
        # the mapped deal goes with the judgement that was kept (not one a newer snapshot's judgement replaced)
        db.conn.executemany("DELETE FROM judged_deals WHERE deal_id = ? AND (SELECT mark FROM judged WHERE deal_id = ?) "
                            "= ?", ((deal_id, deal_id, mark) for deal_id, deal in mapped if deal != UNCHANGED))
        db.conn.executemany("INSERT INTO judged_deals (deal_id, deal) SELECT ?, ? WHERE (SELECT mark FROM judged "
                            "WHERE deal_id = ?) = ?", ((deal_id, deal, deal_id, mark) for deal_id, deal in mapped
                                                       if deal))
        for deal_id in gone:
            db.execute("DELETE FROM judged_deals WHERE deal_id = ? AND deal_id IN (SELECT deal_id FROM judged "
                       "WHERE mark <= ?)", [deal_id, mark])
            db.execute("DELETE FROM judged WHERE deal_id = ? AND mark <= ?", [deal_id, mark])
        db.execute("DELETE FROM judge_marks WHERE seq <= ?", [mark])
        Meta(self.cache).set(_FINGERPRINT, fingerprint)  # a savepoint of the caller's transaction
