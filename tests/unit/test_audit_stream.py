"""The streamed audit (a chunk of cached deals at a time, one pass) finds exactly what the whole-cache path finds."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from crmbridge.cache.store import Cache, open_cache
from crmbridge.commands.regulation import violation_json
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Mode, Outcome
from crmbridge.regulation.evaluate import RULES, Evaluator, evaluate_stream

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
NOW = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings(MAPPINGS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    """The seeded sandbox portal as a sync caches it (no HTTP: the sync's own row conversions)."""
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    state = PortalState(clock=NOW.timestamp)
    seed_portal(state, deals=1500, seed=3, now=NOW.timestamp())
    opened = open_cache(tmp_path_factory.mktemp("stream") / "crmbridge.db")
    with opened.atomic():
        for table, table_rows in state.cache_rows(NOW.isoformat()).items():
            opened.upsert(table, table_rows)
    return opened


def whole_cache(cache: Cache, mappings: Mappings) -> list[dict]:
    """The path `audit` took before: every deal mapped at once, R10's purchases from all of them."""
    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = mapper.deals(cache.deals.records())
    evaluator = Evaluator.of(mappings.regulation, NOW, deals_for_purchases=deals)
    return [violation_json(violation) for deal in deals for violation in evaluator.violations(deal)]


@pytest.mark.parametrize("chunk", [1, 97, 5000])
def test_the_streamed_audit_finds_the_same_violations_on_every_deal(cache: Cache, mappings: Mappings,
                                                                   chunk: int) -> None:
    expected = whole_cache(cache, mappings)
    mapper = DealMapper(mappings.regulation, mappings.binding)
    found = evaluate_stream(mappings.regulation, NOW,
                            mapper.stream(cache.deals.iter_records(chunk, keys=mapper.deal_keys)))
    assert found.deals == cache.count("deals", "deleted = 0") == 1500
    assert [violation_json(violation) for violation in found.violations] == expected  # every field, same order
    rules = Counter(item["rule"] for item in expected)
    assert set(rules) == set(RULES), rules  # the seed breaks every rule somewhere: each one is compared


def test_r10_judges_only_the_clients_latest_purchase_when_streamed(cache: Cache, mappings: Mappings) -> None:
    """The one cross-deal rule: a won deal a later purchase of its client superseded has no R10 violation, though
    the deal alone would have one; the seed has such clients (several won deals), so the drop is exercised."""
    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = mapper.deals(cache.deals.records())
    alone = Evaluator.of(mappings.regulation, NOW)  # every won deal judged as its client's latest
    r10_alone = {violation.deal for deal in deals for violation in alone.violations(deal) if violation.rule == "R10"}
    streamed = evaluate_stream(mappings.regulation, NOW, mapper.stream(cache.deals.iter_records(50)))
    r10_streamed = {violation.deal for violation in streamed.violations if violation.rule == "R10"}
    assert r10_streamed < r10_alone
    won_per_client = Counter(deal.client_key for deal in deals if deal.outcome is Outcome.WON and deal.client_key)
    superseded = {deal.id for deal in deals if deal.id in r10_alone - r10_streamed}
    assert superseded and all(won_per_client[deal.client_key] > 1 for deal in deals if deal.id in superseded)
    assert streamed.evaluator.purchases == Evaluator.of(mappings.regulation, NOW, deals_for_purchases=deals).purchases


def test_iter_records_gives_each_client_once_and_every_linked_row(cache: Cache) -> None:
    whole = cache.deals.records()
    chunks = list(cache.deals.iter_records(64))
    assert [deal for chunk in chunks for deal in chunk.deals] == whole.deals
    contacts = [contact for chunk in chunks for contact in chunk.contacts]
    assert len(contacts) == len(set(contacts)) and set(contacts) == set(whole.contacts) - {""}
    companies = [company for chunk in chunks for company in chunk.companies]
    assert len(companies) == len(set(companies)) and set(companies) == set(whole.companies) - {""}
    for name in ("history", "tasks", "todos"):
        merged = {deal_id: rows for chunk in chunks for deal_id, rows in getattr(chunk, name).items()
                  if deal_id in {deal.id for deal in chunk.deals}}
        assert merged == {deal_id: rows for deal_id, rows in getattr(whole, name).items() if rows}, name


class _Watched(dict):
    """A raw deal that notes every key the mapping reads from it."""

    read: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        _Watched.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        _Watched.read.add(key)
        return super().__getitem__(key)


def test_the_mapping_reads_only_the_keys_the_cache_decodes(cache: Cache, mappings: Mappings) -> None:
    """The streamed audit decodes only `DealMapper.deal_keys` of each raw deal: a key the mapping starts to read
    without being listed there would read as missing. Watch the mapping read whole records."""
    mapper = DealMapper(mappings.regulation, mappings.binding)
    whole = cache.deals.records()
    _Watched.read = set()
    for cached in whole.deals:
        mapper.deal(_Watched(cached.raw), whole.history.get(cached.id, ()), whole.tasks.get(cached.id, ()))
    assert mapper.deal_keys is not None and _Watched.read <= set(mapper.deal_keys)
    picked = next(cache.deals.iter_records(5, keys=mapper.deal_keys)).deals
    assert [deal.raw for deal in picked] == [{key: deal.raw.get(key) for key in mapper.deal_keys}
                                            for deal in whole.deals[:5]]


def test_a_few_deals_are_judged_with_their_clients_deals_only(cache: Cache, mappings: Mappings) -> None:
    """`audit --deal` and `evaluate_cache(deal_ids=...)` take R10's purchases from the deals sharing a client with
    the ones asked for (not the whole cache): every won deal's explanation is the one the whole cache gives."""
    from crmbridge.commands.regulation import _evaluator_for

    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = mapper.deals(cache.deals.records())
    everyone = Evaluator.of(mappings.regulation, NOW, deals_for_purchases=deals)
    won = [deal for deal in deals if deal.outcome is Outcome.WON and deal.client_key][:150]
    for deal in won:
        few = _evaluator_for(cache, mapper, mappings, NOW, [deal.id])
        assert _lines(few, deal) == _lines(everyone, deal), deal.id
    superseded = [deal for deal in won if everyone.purchases and deal.client_key in everyone.purchases
                  and everyone.purchases[deal.client_key][1] != deal.id]
    assert superseded  # a later purchase of the same client: the case the peers must know about


def _lines(evaluator: Evaluator, deal) -> list[tuple]:
    return [(line.rule, line.verdict, line.reason, [violation_json(found) for found in line.violations])
            for line in evaluator.explain(deal)]


def test_check_impact_streams_and_counts_what_every_rule_on_would_flag(cache: Cache, mappings: Mappings) -> None:
    """`check --impact` judges a stream of deals as `audit` does: per rule, the deals it would flag with every rule
    on (R10 counting only a client's latest purchase) and those it flags with the file's modes."""
    from crmbridge.regulation.evaluate import impact

    mapper = DealMapper(mappings.regulation, mappings.binding)
    deals = mapper.deals(cache.deals.records())
    everything_on = Evaluator.of(mappings.regulation, NOW, deals_for_purchases=deals,
                                 override_modes={rule: Mode.AUDIT for rule in RULES})
    modes = Evaluator.of(mappings.regulation, NOW).regulation.directions
    expected = {rule: {"would_flag": 0, "flagged_now": 0} for rule in RULES}
    for deal in deals:
        for rule in {violation.rule for violation in everything_on.violations(deal)}:
            expected[rule]["would_flag"] += 1
            expected[rule]["flagged_now"] += modes[deal.direction].modes[rule] is not Mode.OFF
    streamed = impact(mapper.stream(cache.deals.iter_records(40, keys=mapper.deal_keys)), mappings.regulation, NOW)
    assert streamed == expected and expected["R10"]["would_flag"] > 0


def test_the_stream_reads_one_snapshot_while_a_sync_commits(cache: Cache) -> None:
    """The stream spans many queries (a chunk each): what another connection commits meanwhile (a sync writing a
    deal) shows in none of its chunks; the next stream sees it."""
    import sqlite3

    chunks = cache.deals.iter_records(200)
    first = next(chunks)
    top = cache.db.execute("SELECT MAX(id) FROM deals").fetchone()[0]
    row = cache.db.execute("SELECT * FROM deals WHERE id = ?", [first.deals[0].id]).fetchone()
    other = sqlite3.connect(cache.path, timeout=30)
    try:
        with other:
            other.execute(f"INSERT INTO deals VALUES ({','.join('?' * len(row))})", [top + 1, *row[1:]])
        streamed = [deal.id for chunk in chunks for deal in chunk.deals]
        assert str(top + 1) not in streamed and len(first.deals) + len(streamed) == 1500
        assert str(top + 1) in [deal.id for chunk in cache.deals.iter_records(500) for deal in chunk.deals]
    finally:
        with other:
            other.execute("DELETE FROM deals WHERE id = ?", [top + 1])
        other.close()
