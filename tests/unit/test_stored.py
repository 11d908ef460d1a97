"""Deals and violations kept as JSON come back exactly: every deal and violation of a seeded portal (issue 7, 15)."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from regulation_kit import seeded_cache

from crmbridge.commands.regulation import violation_json
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Deal
from crmbridge.regulation.compiled import compile_regulation
from crmbridge.regulation.evaluate import RULES, Evaluator
from crmbridge.regulation.ledger import violation_row
from crmbridge.regulation.stored import Codec, kept_as
from crmbridge.text import json_text

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 20, 9, 30, 17, 250_001, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings(ROOT / "mappings")


@pytest.fixture(scope="module")
def mapped(mappings: Mappings) -> tuple[DealMapper, list[Deal]]:
    mapper = DealMapper(mappings.regulation, mappings.binding)
    with tempfile.TemporaryDirectory() as folder, seeded_cache(Path(folder) / "c.db", deals=1000, seed=11, now=NOW) as cache:
        return mapper, mapper.deals(cache.deals.records())


def test_every_deal_comes_back_the_same_in_the_same_zones(mapped: tuple[DealMapper, list[Deal]]) -> None:
    mapper, deals = mapped
    codec = Codec(mapper.zone, compile_regulation(mapper.regulation))
    for deal in deals:
        back = codec.to_deal(codec.deal(deal))
        assert back == deal and repr(back) == repr(deal)  # repr: the zone of every moment, the types of values
        assert back.run == deal.run and [task.title_key for task in back.tasks] == [task.title_key for task in deal.tasks]


def test_every_violation_reads_back_as_the_audit_and_the_ledger_show_it(
        mappings: Mappings, mapped: tuple[DealMapper, list[Deal]]) -> None:
    mapper, deals = mapped
    evaluator = Evaluator.of(mappings.regulation, NOW)
    codec = Codec(mapper.zone, evaluator.regulation)
    rules = set()
    for deal in deals:
        found = evaluator.violations(deal)
        back = codec.to_violations(codec.violations(found))
        assert [violation_json(v) for v in back] == [violation_json(v) for v in found]
        assert [violation_row(v, "t") for v in back] == [violation_row(v, "t") for v in found]
        assert [(v.key, v.message, v.since, v.entry, v.clause, v.template, v.severity, v.closed, v.grows) for v in back] == \
            [(v.key, v.message, v.since, v.entry, v.clause, v.template, v.severity, v.closed, v.grows) for v in found]
        rules |= {v.rule for v in found}
    assert rules == set(RULES)
    assert codec.violations([]) is None and codec.to_violations(None) == []


def test_moments_keep_their_own_zone_and_values_their_type(mappings: Mappings) -> None:
    codec = Codec(ZoneInfo("Europe/Moscow"), compile_regulation(mappings.regulation))
    moments = [datetime(2026, 3, 29, 1, 30, 0, 999_999, tzinfo=ZoneInfo("Europe/Berlin")),
               datetime(1969, 12, 31, 23, 59, tzinfo=timezone.utc),
               datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
               datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Moscow"))]
    for moment in moments:
        back = codec.to_moment(codec.moment(moment))
        assert back == moment and repr(back) == repr(moment) and back.isoformat() == moment.isoformat()
    assert isinstance(codec.moment(moments[3]), int)  # the default zone's moments are bare numbers
    for value in ["text", 7, 2.5, True, None, Decimal("19999.990"), datetime(2026, 1, 2).date(), ["a", {"b": 1}]]:
        back = codec.to_value(codec.value(value))
        assert back == value and type(back) is type(value)


def test_kept_violations_read_back_as_printed_and_as_the_ledger_opens_them(
        mappings: Mappings, mapped: tuple[DealMapper, list[Deal]]) -> None:
    """What the audit keeps of a judgement (`kept_as`: the fields it counts and compares, and the text it prints)
    reads back exactly; one whose time waited grows (R7, R8) is kept whole."""
    from crmbridge.compliance import shown, violation_text

    mapper, deals = mapped
    evaluator = Evaluator.of(mappings.regulation, NOW)
    codec = Codec(mapper.zone, evaluator.regulation)
    kinds = set()
    for deal in deals:
        found = evaluator.violations(deal)
        back = codec.to_violations(codec.violations([kept_as(v, shown) for v in found]))
        for fresh, read in zip(found, back, strict=True):
            kinds.add((type(read).__name__, fresh.grows is not None))
            for beyond in (False, True):
                assert json.loads(violation_text(read, beyond)) == json.loads(json_text(violation_json(fresh, beyond=beyond)))
            assert violation_row(read, "t") == violation_row(fresh, "t")
            assert (read.key, read.rule, read.deal, read.since, read.closed, read.manager, read.direction, read.stage,
                    read.severity, read.clause) == (fresh.key, fresh.rule, fresh.deal, fresh.since, fresh.closed,
                                                    fresh.manager, fresh.direction, fresh.stage, fresh.severity,
                                                    fresh.clause)
    assert kinds == {("KeptViolation", False), ("Violation", True)}
