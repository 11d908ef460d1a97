"""R5 against the sandbox portal over loopback: a postponed client's next-contact date and follow-up task are never
set in the past; a client postponed longer ago than the last 3/6/9-month option is recorded, not acted on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from crmbridge.cache.store import Cache
from crmbridge.enforce.plan import ActionKind
from crmbridge.enforce.run import evaluate
from crmbridge.model import Mode
from crmbridge.regulation.compiled import compile_regulation
from crmbridge.regulation.evaluate import RULES, beyond_look_back
from tests.integration.enforce_kit import run, shipped, synced

pytestmark = pytest.mark.integration

R5_ONLY = {rule: Mode.ENFORCE if rule == "R5" else Mode.OFF for rule in RULES}


def test_r5_never_writes_a_past_next_contact_date_nor_tasks_for_a_past_day(make_portal, cache: Cache) -> None:
    portal, client = synced(make_portal, cache, deals=2000, seed=3)  # the sandbox the defect was found on
    mappings = shipped()
    now = datetime.now(UTC)
    today = now.astimezone(ZoneInfo(mappings.regulation.calendar.timezone)).date()
    judged = evaluate(cache, mappings, now, modes=R5_ONLY, record=False)
    directions = compile_regulation(mappings.regulation).directions
    r5 = [v for found in judged.violations.values() for v in found if v.rule == "R5"]
    history = {v.deal for v in r5 if beyond_look_back(v, directions[v.direction], now)}

    report = run(client, cache, mappings, R5_ONLY, now=lambda: now)
    acted = [a for a in report.to_write if a.rule == "R5"]
    field_writes = [a for a in acted if a.kind is ActionKind.SET_FIELD]
    follow_ups = [a for a in acted if a.kind is ActionKind.CREATE_TASK]
    assert field_writes and follow_ups
    # planned: every next-contact date today or later, every follow-up due after now
    written = {a.deal: next(iter(a.params["fields"].items())) for a in field_writes}
    assert all(value >= today.isoformat() for _, value in written.values()), written
    assert all(datetime.fromisoformat(a.params["fields"]["DEADLINE"]) > now for a in follow_ups)
    # the seed holds both: clients postponed within the last 9 months, and longer ago (every option passed)
    assert history and len(history) < len(r5)
    # a client postponed past every option is history: recorded, counted, nobody is tasked or told, nothing written
    assert not [a for a in acted if a.deal in history]
    assert report.plan.old_breaches.get("R5") == len(history)
    # executed: what the portal now holds
    rows = portal.state.deals.rows
    for deal, (crm_field, value) in written.items():
        assert str(rows[int(deal)][crm_field])[:10] == value
    created = [task for task in portal.state.tasks.rows.values()
               if any(a.marker in str(task.get("description")) for a in follow_ups)]
    assert len(created) == len(follow_ups)
    assert all(datetime.fromisoformat(task["deadline"]) > now for task in created)
    # and it settles: the dates and tasks written satisfy R5, the history stays recorded only
    again = run(client, cache, mappings, R5_ONLY, now=lambda: now)
    assert not [a for a in again.to_write if a.rule == "R5"]
    assert again.plan.old_breaches.get("R5") == len(history)
    print(f"R5: {len(field_writes)} next-contact dates written (none in the past), {len(history)} clients postponed "
          f"past every option recorded only; kinds {dict(Counter(a.kind.value for a in acted))}")
