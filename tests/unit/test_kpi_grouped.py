"""The KPI reads grouped in SQL give what reading every row one by one gives; the fast compliance count equals the
plain one; the bound number fields' memo follows the deals' writes; the grouped reads use their indexes."""

from __future__ import annotations

import random
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmbridge.cache import kpi as store
from crmbridge.cache import rows
from crmbridge.cache.store import Cache, open_cache
from crmbridge.kpi.facts import KpiEngine, RateAcc, kpi_rows
from crmbridge.kpi.inputs import DealFact, FactData, ViolationFact
from crmbridge.kpi.load import default_kpi_text, load_kpis, parse_kpis
from crmbridge.kpi.periods import Period, Span, months_back
from crmbridge.kpi.service import fact_data, store_moment
from crmbridge.mapping.load import load_mappings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 2, 9, 30, 15, 500_000, tzinfo=timezone.utc)  # a fraction of a second: deadline "<=" now
MONTHS = months_back(Period.parse("2026-11"), 12)


def _odd(moment: datetime, rng: random.Random) -> str:
    """A timestamp as other integrations or broken data write them, now and then."""
    roll = rng.random()
    if roll < 0.05:
        return moment.astimezone(timezone.utc).isoformat()  # another offset
    if roll < 0.08:
        return moment.replace(tzinfo=None).isoformat()  # no offset: the portal's zone
    if roll < 0.10:
        return moment.isoformat().replace("T", " ")  # another separator
    if roll < 0.11:
        return moment.isoformat()[:8] + "31" + moment.isoformat()[10:]  # 31 November and the like
    if roll < 0.12:
        return "garbage"
    return moment.isoformat()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cache, Path]:
    """The sandbox's seed (600 deals, a year of calls, tasks and stage changes), to-dos, odd timestamps, violations."""
    from crmbridge.enforce.run import evaluate
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    folder = tmp_path_factory.mktemp("grouped")
    state = PortalState(clock=lambda: NOW.timestamp())
    seed_portal(state, deals=600, seed=7, now=NOW.timestamp())
    stamp = NOW.isoformat()
    tables = {**state.cache_rows(stamp), **state.kpi_cache_rows(stamp)}
    rng = random.Random(7)
    for row in tables["communications"]:
        for column in ("start_time", "last_updated"):
            if row[column]:
                row[column] = _odd(datetime.fromisoformat(row[column]), rng)
    for row in tables["tasks"]:
        for column in ("deadline", "closed_date", "created_date"):
            if row[column]:
                row[column] = _odd(datetime.fromisoformat(row[column]), rng)
    for row in tables["stage_history"]:
        if row["created_time"]:
            row["created_time"] = _odd(datetime.fromisoformat(row["created_time"]), rng)
    todos = []
    for index, deal_row in enumerate(tables["deals"][::3]):
        created = datetime.fromisoformat(deal_row["date_create"])
        deadline = created + timedelta(days=rng.randint(1, 20), hours=rng.randint(0, 23))
        done = rng.random() < 0.6
        closed = deadline + timedelta(hours=rng.randint(-72, 48)) if done else created
        if index == 0:  # open and due within the very second of `now`
            deadline, done = NOW.replace(microsecond=0), False
        todos.append({**rows.activity_row({
            "ID": str(900_000 + index), "OWNER_TYPE_ID": "2", "OWNER_ID": str(deal_row["id"]),
            "PROVIDER_ID": "CRM_TODO", "COMPLETED": "Y" if done else "N", "RESPONSIBLE_ID": deal_row["assigned_by_id"],
            "DEADLINE": _odd(deadline.astimezone(created.tzinfo), rng), "CREATED": created.isoformat(),
            "LAST_UPDATED": _odd(closed.astimezone(created.tzinfo), rng)}), "synced_at": stamp})
    tables["activities"] = todos
    cache = open_cache(folder / "cache.db")
    with cache.atomic():
        for table, table_rows in tables.items():
            cache.upsert(table, table_rows)
        # a call bound to a deal the cache does not know, one bound to none, one to a deleted deal
        cache.db.execute("UPDATE communications SET deal_id = 99999999 WHERE id IN "
                         "(SELECT id FROM communications ORDER BY id LIMIT 3)")
        cache.db.execute("UPDATE deals SET deleted = 1 WHERE id IN (SELECT id FROM deals ORDER BY id DESC LIMIT 5)")
    evaluate(cache, load_mappings(ROOT / "mappings"), NOW - timedelta(days=40))
    evaluate(cache, load_mappings(ROOT / "mappings"), NOW)
    return cache, ROOT / "mappings"


def _figures(cache: Cache, mappings: Path, *, grouped: bool) -> list[tuple[Any, ...]]:
    loaded = load_mappings(mappings)
    kpis = load_kpis(mappings, loaded).kpis
    engine = KpiEngine(fact_data(cache, loaded, kpis, NOW, grouped=grouped), kpis, NOW)
    periods = [*MONTHS, Period.parse("2026-Q3"), Period.parse("2026-H1"), Period.parse("2026")]
    found = kpi_rows(engine, periods, None, directions=list(loaded.regulation.directions))
    funnels = [engine.funnel(direction, MONTHS[0].start, MONTHS[-1].end) for direction in engine.data.funnels]
    return [(row.period, row.scope, row.manager_id, row.department_id, row.direction, row.kpi, row.fact,
             row.previous) for row in found] + [("funnel", *counts) for counts in funnels]


def test_grouped_reads_give_what_reading_every_row_gives(seeded: tuple[Cache, Path]) -> None:
    cache, mappings = seeded
    grouped, single = _figures(cache, mappings, grouped=True), _figures(cache, mappings, grouped=False)
    assert len(grouped) == len(single) > 1000
    differing = [(a, b) for a, b in zip(grouped, single) if a[:6] != b[:6] or not _close(a[6:], b[6:])]
    assert not differing, differing[:5]
    # the odd timestamps went the slow way, the rest was grouped
    loaded = load_mappings(mappings)
    data = fact_data(cache, loaded, load_kpis(mappings, loaded).kpis, NOW)
    assert any(work.count > 1 for work in data.work) and any(work.deadline is not None for work in data.work)
    overdue = [kpi for kpi in grouped if len(kpi) > 6 and kpi[5] == "tasks_overdue" and kpi[1] == "company" and kpi[6]]
    assert overdue, "the seed has overdue tasks and to-dos"


def _close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 1e-9 * max(1, abs(x)))
               for x, y in zip(a, b))


def test_the_deadline_of_this_very_second_is_past_when_now_has_a_fraction(seeded: tuple[Cache, Path]) -> None:
    cache, _ = seeded
    local, cut = store_moment(NOW, _clock())
    assert cut and local.endswith("+03:00")
    groups = store.work_groups(cache, store.WORK_SOURCES["todos"], "deadline", "+03:00", (local, cut))
    assert any(group.deal_ids and "L" in group.deal_ids for group in groups)


def _clock():  # noqa: ANN202
    from zoneinfo import ZoneInfo

    from crmbridge.kpi.inputs import LocalTime

    return LocalTime(ZoneInfo("Europe/Moscow"))


def test_grouped_reads_use_their_indexes(seeded: tuple[Cache, Path]) -> None:
    """The indexes (cache/schema.py) hold the shape checks written out as cache/kpi.py writes them: if one is edited
    without the other, SQLite stops using the index (the figures stay right, the speed goes)."""
    cache, _ = seeded
    plans: list[str] = []
    real = cache.db.execute

    def spy(sql: str, params: Any = ()) -> Any:
        if sql.lstrip().upper().startswith("SELECT") and "GROUP BY" in sql:
            plans.append(" ".join(row[-1] for row in real("EXPLAIN QUERY PLAN " + sql, params).fetchall()))
        return real(sql, params)

    cache.db.execute = spy  # type: ignore[method-assign]
    try:
        now = store_moment(NOW, _clock())
        for name, date, late in (("communications", "start", False), ("todos", "closed", False),
                                 ("todos", "deadline", True), ("tasks", "closed", False), ("tasks", "deadline", True)):
            store.work_groups(cache, store.WORK_SOURCES[name], date, "+03:00", now if late else None)
        store.stage_groups(cache, "+03:00")
    finally:
        del cache.db.execute
    assert len(plans) == 6
    for plan in plans:
        assert "USING COVERING INDEX" in plan and "_kpi" in plan and "<expr>=?" in plan, plan


# ---------------------------------------------------------------- compliance: the fast count and the plain one


def _plain_compliance(data: FactData, rules: set[str], cohort: str, period: Period | Span) -> dict[Any, tuple[float, int]]:
    """What the engine did before it counted by bisecting: every deal looked at for every period."""
    start, end = period.start, period.end
    troubled = {v.deal_id for v in data.violations if (not rules or v.rule in rules) and (
        cohort == "created" or (v.opened < end and (v.resolved is None or v.resolved >= start)))}
    applies = set().union(*(data.rule_directions.get(rule, set()) for rule in rules)) if rules else None
    found: dict[Any, RateAcc] = {}
    for deal in data.deals:
        if applies is not None and deal.direction not in applies:
            continue
        if cohort == "created":
            if not start <= deal.created < end:
                continue
        elif deal.created >= end or (deal.closed is not None and deal.closed < start):
            continue
        acc = found.setdefault((deal.manager, deal.direction), RateAcc())
        acc.add(0.0 if deal.id in troubled else 1.0)
    return {group: (acc.hits, acc.count) for group, acc in found.items()}


_days = st.dates(min_value=date(2025, 10, 1), max_value=date(2027, 2, 28))


@st.composite
def _compliance_data(draw: Any) -> FactData:
    deals = []
    for index in range(draw(st.integers(0, 40))):
        created = draw(_days)
        closed = draw(st.none() | _days)  # now and then before its creation: counted as it is
        deals.append(DealFact(index, draw(st.sampled_from(["1", "2", None])), draw(st.sampled_from(["a", "b"])),
                              "won" if closed else "open", None, 1.0, created, closed, None))
    violations = []
    for _ in range(draw(st.integers(0, 40))):
        opened = draw(_days)
        violations.append(ViolationFact(draw(st.integers(0, 45)), draw(st.sampled_from(["R1", "R7"])), None, opened,
                                        draw(st.none() | _days)))
    return FactData(deals=deals, violations=violations, rule_directions={"R1": {"a", "b"}, "R7": {"a"}})


@settings(max_examples=150, deadline=None)
@given(_compliance_data(), st.sampled_from(["2026-11", "2026-02", "2026-Q1", "2026-H2", "2026", "2027-01"]))
def test_compliance_by_bisecting_equals_looking_at_every_deal(data: FactData, text: str) -> None:
    kpis, _ = parse_kpis(default_kpi_text(), "kpi.yaml", None)
    engine = KpiEngine(data, kpis, datetime(2027, 3, 1, tzinfo=timezone.utc))
    period = Period.parse(text)
    periods: list[Period | Span] = [period, Span(Period.parse("2026-10"), Period.parse("2027-01"))]
    for kpi, rules, cohort in (("compliance", set(), "active"), ("sla_hit_rate", {"R7"}, "created")):
        for chosen in periods:
            fast = {group: (acc.hits, acc.count) for group, acc in engine.groups(kpi, chosen).items()}  # type: ignore
            assert fast == _plain_compliance(data, rules, cohort, chosen), (kpi, chosen)


# ---------------------------------------------------------------- the bound number fields' memo


def test_bound_fields_are_read_once_and_again_after_the_deal_is_written(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "cache.db")
    raw = {"ID": "5", "CATEGORY_ID": "0", "STAGE_ID": "WON", "DATE_CREATE": "2026-11-01T10:00:00+03:00",
           "UF_CRM_MARGIN": "120.5"}
    cache.upsert("deals", [rows.deal_row(raw, "2026-11-02T00:00:00+00:00")])
    fields = {"margin": "UF_CRM_MARGIN"}
    assert store.deal_values(cache, fields) == {"margin": {5: "120.5"}}
    assert cache.db.execute("SELECT count(*) FROM kpi_deal_values").fetchone()[0] == 1
    cache.upsert("deals", [rows.deal_row({**raw, "UF_CRM_MARGIN": "99"}, "2026-11-03T00:00:00+00:00")])
    assert cache.db.execute("SELECT count(*) FROM kpi_deal_values").fetchone()[0] == 0  # the trigger dropped it
    assert store.deal_values(cache, fields) == {"margin": {5: "99"}}
    cache.db.execute("DELETE FROM deals")
    assert cache.db.execute("SELECT count(*) FROM kpi_deal_values").fetchone()[0] == 0
    cache.close()


def test_a_read_only_cache_reads_bound_fields_out_of_raw(tmp_path: Path) -> None:
    import sqlite3

    import sqlite_utils

    cache = open_cache(tmp_path / "cache.db")
    cache.upsert("deals", [rows.deal_row({"ID": "5", "CATEGORY_ID": "0", "UF_CRM_NPS": 9}, "2026-11-02T00:00:00+00:00")])
    cache.close()
    conn = sqlite3.connect(f"{(tmp_path / 'cache.db').resolve().as_uri()}?mode=ro", uri=True)
    read_only = Cache(sqlite_utils.Database(conn), tmp_path / "cache.db")
    assert store.deal_values(read_only, {"nps": "UF_CRM_NPS"}) == {"nps": {5: 9}}
    conn.close()


def test_kpis_of_an_in_memory_cache_are_read_without_a_second_connection(tmp_path: Path) -> None:
    cache = open_cache(":memory:")
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    loaded = load_mappings(tmp_path / "mappings")
    data = fact_data(cache, loaded, load_kpis(tmp_path / "mappings", loaded).kpis, NOW)
    assert data.deals == [] and data.work == []
