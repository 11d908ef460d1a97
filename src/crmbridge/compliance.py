"""Edge: evaluate cached deals against the regulation and keep the `violations` ledger up to date.

`audit_cache` judges afresh only the deals whose inputs changed since their last judgement (the cache's triggers mark
them) or whose horizon came (the clock may change what a rule says of them); every other deal's kept judgement serves
as it is (issue 7, item 15: 100,000 deals in seconds). What it finds is what judging every deal finds.
"""

from __future__ import annotations

import hashlib
import sqlite3
from functools import lru_cache
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from crmbridge.bulk import paused_gc
from crmbridge.cache.judged import UNCHANGED, JudgedRow
from crmbridge.cache.store import Cache
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings
from crmbridge.model import Deal, Violation
from crmbridge.regulation.evaluate import Evaluator, StreamJudge, latest_purchases, settle_r10
from crmbridge.regulation.ledger import LedgerChanges, reconcile
from crmbridge.regulation.stored import Codec, KeptViolation, kept_as, micros
from crmbridge.text import JsonText, json_text

#: a deal whose horizon is nearer than this is kept mapped with its judgement: judged again without mapping it
KEEP_MAPPED = timedelta(days=1)
_NONE: list[Violation] = []
#: the code a judgement depends on besides the files: when it changes (an upgrade), every deal is judged afresh
_JUDGING_CODE = ("model.py", "mapping/binding.py", "mapping/records.py", "cache/deals.py", "compliance.py",
                 "regulation")
_PACKAGE = Path(__file__).resolve().parent


def violation_json(violation: Violation, *, beyond: bool = False) -> dict[str, Any]:
    """One violation as `audit --json` shows it; `beyond_look_back`: older than its rule's look-back window (recorded,
    not pushed). `beyond_look_back` stays the last key: `violation_text` sets it in a kept violation's text."""
    return {
        "rule": violation.rule, "deal": violation.deal, "severity": violation.severity.value,
        "direction": violation.direction, "stage": violation.stage, "since": violation.since.isoformat(),
        "entry": violation.entry_key, "missing": list(violation.missing),
        "manager": violation.manager, "message": violation.message, "clause": violation.clause,
        "key": violation.key, "details": dict(violation.details), "beyond_look_back": beyond,
    }


_NOT_BEYOND = ', "beyond_look_back": false}'
#: where a kept text leaves the clause out (a JSON string's own quotes are escaped: this cannot occur inside one)
_NO_CLAUSE = '"clause": null'


def violation_text(violation: Violation, beyond: bool) -> JsonText:
    """`violation_json` as JSON text: a kept violation's was made when it was judged (45,000 of them are neither
    decoded nor encoded again at every audit); the clause (the regulation's) and `beyond_look_back` (which moves with
    the clock) are set now."""
    if isinstance(violation, KeptViolation):
        text = violation.text.decode().replace(_NO_CLAUSE, f'"clause": {_clause_json(violation.clause)}', 1)
        return JsonText(text[:-len(_NOT_BEYOND)] + ', "beyond_look_back": true}' if beyond else text)
    return JsonText(json_text(violation_json(violation, beyond=beyond), indent=None))


@lru_cache(maxsize=256)
def _clause_json(clause: str) -> str:
    return json_text(clause, indent=None)


def shown(violation: Violation) -> str:
    """What `violation_text` prints of a violation within its look-back windows, without its clause (the regulation
    has it): kept with its judgement, on a line of its own."""
    text = json_text({**violation_json(violation), "clause": None}, indent=None)
    if not text.endswith(_NOT_BEYOND) or "\n" in text or text.count(_NO_CLAUSE) != 1:
        raise AssertionError(f"violation_json's shape moved: {text[-40:]}")
    return text


def record_violations(cache: Cache, found: Iterable[Violation], now_iso: str,
                      evaluated_deals: set[str] | None = None, refresh: set[str] | None = None) -> LedgerChanges:
    """Open new violations, refresh those still found (those whose keys are in `refresh`; None: all), resolve those
    gone (of `evaluated_deals`, or of every deal when None); one transaction."""
    found = list(found)
    return cache.violations.record(lambda open_rows: reconcile(open_rows, found, now_iso, evaluated_deals, refresh),
                                   now_iso)


@dataclass
class Audit:
    """One evaluation of every cached deal."""

    deals: int  # live deals evaluated (judged afresh or by their kept judgement)
    violations: list[Violation]  # deal by deal in id order
    evaluator: Evaluator
    judged: int  # deals judged afresh this time
    opened: int = 0
    resolved: int = 0


@dataclass(slots=True)
class _Fresh:
    """A deal judged in this run, with what is kept of it."""

    violations: list[Violation]
    horizon: datetime | None
    client_key: str | None
    purchase_at: int | None
    mapped: str | None  # the deal as JSON when its horizon is near (and the judgement is to be kept)


def judge_after_sync(cache: Cache, mappings_dir: Path, crm: str, now: datetime) -> int | None:
    """`judge_changed` with the admin's mapping files; None when they cannot be read (none yet before `discover`, or
    a mistake `crmbridge check` names): the sync is not the place to report them, the next audit judges then."""
    from crmbridge.errors import CrmBridgeError
    from crmbridge.mapping.load import load_mappings

    try:
        mappings = load_mappings(mappings_dir, crm=crm)
        return judge_changed(cache, mappings, now)
    except (CrmBridgeError, OSError, sqlite3.Error):
        # the sync itself succeeded; what stops judging (a record SQLite cannot read as JSON, say) the audit reports
        return None


def judge_changed(cache: Cache, mappings: Mappings, now: datetime) -> int:
    """After a sync: judge the deals it changed (every deal when the regulation, the binding or the code changed) and
    keep the judgements, so the next audit reads them instead of judging then (it writes them to the ledger).
    Returns how many deals were judged."""
    return audit_cache(cache, mappings, now, settle=False).judged


def audit_cache(cache: Cache, mappings: Mappings, now: datetime, *, record: bool = True, settle: bool = True) -> Audit:
    """Every live cached deal's violations at `now`. With `record`, the ledger (`violations`) and the kept
    judgements are written in one transaction; without, nothing is written. Without `settle` (`judge_changed`),
    only the changed deals are judged and kept, nothing else is read and no violation is returned."""
    mapper = DealMapper(mappings.regulation, mappings.binding)
    judge = StreamJudge(mappings.regulation, now)
    codec = Codec(mapper.zone, judge.evaluator.regulation)
    at = micros(now)
    fresh: dict[int, _Fresh] = {}
    kept: list[JudgedRow] = []
    gone: set[int] = set()

    def judged(deals: Iterable[Deal], keep_mapped: bool = True, unchanged: bool = False) -> None:
        for deal in deals:
            made = judge.judgement(deal)
            mapped = None
            if keep_mapped and record and made.horizon is not None and made.horizon - now < KEEP_MAPPED:
                mapped = UNCHANGED if unchanged else codec.deal(deal)  # judged again from its kept mapping: kept as is
            purchase = made.purchase
            # what the ledger, the output and the kept judgement read of each violation, made once
            violations = [kept_as(violation, shown) for violation in made.violations] if record else made.violations
            if not violations:
                violations = _NONE  # one shared empty list: most deals have no violation (100,000 lists otherwise)
            fresh[int(deal.id)] = _Fresh(violations, made.horizon, purchase[0] if purchase else None,
                                         micros(purchase[1]) if purchase else None, mapped)

    with paused_gc():  # mapping and judging allocate many small objects and no reference cycles
        with cache.snapshot():  # one state of the file: the marks, the kept judgements and the deals agree
            mark = cache.judged.last_mark()
            own = (cache.deals.own_users(), cache.deals.reverted())
            fingerprint = judging_fingerprint(mappings, own[0])
            rebuilt = cache.judged.fingerprint() != fingerprint
            if rebuilt:  # first audit, or the regulation, the binding or the code changed: every deal afresh
                # not kept mapped (memory: a whole cache's near horizons); the next audit keeps those it judges again
                judged(mapper.stream(cache.deals.iter_records(keys=mapper.deal_keys)), keep_mapped=False)
            else:
                # every live deal was judged when the judgements were rebuilt; a deal written or restored since is
                # marked by the triggers
                changed = cache.judged.marked(mark)
                rows = list(cache.judged.rows()) if settle else []
                due = {row.deal_id for row in rows if row.deal_id not in changed and (
                    (row.recheck_at is not None and row.recheck_at <= at) or row.judged_at > at)}
                mapped = cache.judged.kept_deals(due)
                judged((codec.to_deal(mapped[deal_id]) for deal_id in sorted(mapped)), unchanged=True)
                unmapped = sorted(changed | (due - mapped.keys()))
                for start in range(0, len(unmapped), 500):
                    judged(mapper.deals(cache.deals.records(unmapped[start:start + 500], own=own)))
                gone = changed - fresh.keys()  # marked, and no longer a live deal
                kept = [row for row in rows if row.deal_id not in fresh and row.deal_id not in gone]
                del rows
            deals = len(fresh) + len(kept)
            violations, rewrite = _settled(fresh, kept, cache.judged.violations(), codec, judge.evaluator) if settle \
                else ([], set())
    audit = Audit(deals, violations, judge.evaluator, len(fresh))
    if not settle:
        with cache.atomic():
            cache.judged.save(_rows(fresh, at, codec), gone, mark=mark, fingerprint=fingerprint, rebuilt=rebuilt,
                              recorded=False)
    elif record:
        with cache.atomic():
            refresh = {violation.key for item in fresh.values() for violation in item.violations} | rewrite
            changes = record_violations(cache, violations, now.astimezone(timezone.utc).isoformat(), refresh=refresh)
            cache.judged.save(_rows(fresh, at, codec), gone, mark=mark, fingerprint=fingerprint, rebuilt=rebuilt)
        audit.opened, audit.resolved = len(changes.opened), len(changes.resolved)
    return audit


def _settled(fresh: dict[int, _Fresh], kept: list[JudgedRow], texts: Iterator[tuple[int, str]], codec: Codec,
             evaluator: Evaluator) -> tuple[list[Violation], set[str]]:
    """Every deal's violations in deal id order (fresh, or kept: `texts` in deal id order), R10's settled across every
    purchase, a kept time waited (R7, R8) counted up to now; and the keys of the kept violations whose ledger rows are
    to be rewritten (grown so, or judged after a sync and not in the ledger yet). Empties `kept`."""
    order: list[tuple[int, Any]] = sorted([*fresh.items(), *((row.deal_id, row) for row in kept)],
                                          key=lambda item: item[0])
    kept.clear()
    latest = latest_purchases((str(deal_id), item.client_key, item.purchase_at) for deal_id, item in order
                              if item.purchase_at is not None)
    found: list[Violation] = []
    grown: set[str] = set()
    text_of, text = -1, None
    for deal_id, item in order:
        if isinstance(item, _Fresh):
            violations = item.violations
        else:
            while text_of < deal_id:  # the kept texts come in deal id order too (those of fresh deals are skipped)
                text_of, text = next(texts, (2 ** 63, None))
            violations = codec.to_violations(text) if text_of == deal_id else []
            for position, violation in enumerate(violations):
                if violation.grows is not None:
                    violations[position] = evaluator.grown(violation)
                    grown.add(violation.key)
                elif item.unrecorded:
                    grown.add(violation.key)
        found += settle_r10(violations, item.client_key, latest)
    return found, grown


def _rows(fresh: dict[int, _Fresh], at: int, codec: Codec) -> Iterator[tuple[Any, ...]]:
    for deal_id, item in fresh.items():
        yield (deal_id, at, micros(item.horizon) if item.horizon is not None else None, item.client_key,
               item.purchase_at, codec.violations(item.violations), item.mapped)


def judging_fingerprint(mappings: Mappings, own_users: Iterable[str]) -> str:
    """What every kept judgement depends on besides its deal: the regulation and the binding as loaded, the code that
    maps and judges, and the users crmbridge writes as (their activity is not a person's, R11)."""
    digest = hashlib.sha256()
    digest.update(mappings.regulation.model_dump_json().encode())
    digest.update(mappings.binding.model_dump_json().encode())
    for name in _JUDGING_CODE:
        path = _PACKAGE / name
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(source.read_bytes())
    digest.update(",".join(sorted(own_users)).encode())
    return digest.hexdigest()
