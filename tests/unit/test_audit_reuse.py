"""The audit reuses kept judgements (issue 7, item 15) and finds exactly what judging every deal afresh finds.

A seeded cache is audited at a run of moments (a minute later, an hour, a day, a week) and after every kind of change
a sync or enforcement makes (a deal's record, its stage history, a task, a to-do, a client, a deletion, crmbridge's
own done action, the regulation itself); each time every field of every violation and the ledger's open rows are
compared with a whole-cache evaluation, and the deals judged afresh are few.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from regulation_kit import seeded_cache

from crmbridge.cache.store import Cache
from crmbridge.compliance import audit_cache, violation_text
from crmbridge.mapping.binding import DealMapper
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.regulation.evaluate import RULES, evaluate_stream

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 9, 30, 17, 250_000, tzinfo=timezone.utc)


@pytest.fixture()
def mappings() -> Mappings:
    return load_mappings(ROOT / "mappings")


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    with seeded_cache(tmp_path / "crmbridge.db", deals=900, seed=3, now=T0) as opened:
        yield opened


def printed(violation) -> dict:
    """A violation as `audit --json` prints it (a kept one's text, a fresh one encoded)."""
    return json.loads(violation_text(violation, False))


def afresh(cache: Cache, mappings: Mappings, now: datetime) -> list[dict]:
    mapper = DealMapper(mappings.regulation, mappings.binding)
    found = evaluate_stream(mappings.regulation, now, mapper.stream(cache.deals.iter_records(keys=mapper.deal_keys)))
    return [printed(violation) for violation in found.violations]


def audited(cache: Cache, mappings: Mappings, now: datetime) -> tuple[int, int]:
    """Audit at `now`; assert it equals a whole-cache evaluation and the ledger's open rows; (deals, judged)."""
    run = audit_cache(cache, mappings, now)
    expected = afresh(cache, mappings, now)
    assert [printed(violation) for violation in run.violations] == expected
    open_rows = {row["key"]: row for row in cache.query("SELECT key, message, details, severity, missing FROM violations "
                                                        "WHERE resolved IS NULL")}
    assert set(open_rows) == {item["key"] for item in expected}
    for item in expected:  # what a kept judgement left in the ledger is what a fresh one writes
        row = open_rows[item["key"]]
        assert (row["message"], json.loads(row["details"]), row["severity"], json.loads(row["missing"])) == \
            (item["message"], item["details"], item["severity"], item["missing"])
    assert run.deals == cache.count("deals", "deleted = 0")
    return run.deals, run.judged


def test_audits_at_later_moments_reuse_judgements_and_find_what_judging_afresh_finds(cache: Cache,
                                                                                     mappings: Mappings) -> None:
    deals, judged = audited(cache, mappings, T0)
    assert judged == deals == 900  # the first audit judges every deal
    rules = {item["rule"] for item in afresh(cache, mappings, T0)}
    assert rules == set(RULES)
    for step in (timedelta(0), timedelta(seconds=20), timedelta(minutes=1), timedelta(minutes=61),
                 timedelta(hours=9), timedelta(days=1), timedelta(days=1, minutes=1), timedelta(days=8),
                 timedelta(days=40)):
        deals, judged = audited(cache, mappings, T0 + step)
        if step < timedelta(days=8):  # a month later most horizons came: correct is all that counts then
            assert judged < deals / 2, (step, judged)
    deals, judged = audited(cache, mappings, T0 + timedelta(days=40))
    assert judged == 0  # nothing changed, no horizon came: every judgement reused
    deals, judged = audited(cache, mappings, T0)  # the clock went back: judgements made later are not trusted
    assert judged > 0


def test_every_change_a_sync_or_enforcement_makes_is_judged_afresh(cache: Cache, mappings: Mappings) -> None:
    audited(cache, mappings, T0)
    db = cache.db
    later = T0 + timedelta(minutes=2)

    def changed(sql: str, params: list | tuple = ()) -> int:
        with cache.atomic():
            db.execute(sql, params)
        return audited(cache, mappings, later)[1]

    baseline = audited(cache, mappings, later)[1]
    assert audited(cache, mappings, later)[1] == 0
    deal_id, raw = db.execute("SELECT id, raw FROM deals WHERE stage_semantic = 'P' ORDER BY id LIMIT 1").fetchone()
    record = json.loads(raw)
    record["OPPORTUNITY"], record["PROBABILITY"] = "0", "1"  # R2 and R4 now say something else
    assert changed("UPDATE deals SET raw = ? WHERE id = ?", [json.dumps(record), deal_id]) == 1
    assert changed("UPDATE deals SET synced_at = 'x' WHERE id = ?", [deal_id]) == 0  # not an input of the mapping
    history = db.execute("SELECT * FROM stage_history WHERE deal_id = ? ORDER BY id DESC LIMIT 1", [deal_id]).fetchone()
    columns = [column[0] for column in db.execute("SELECT * FROM stage_history LIMIT 0").description]
    moved = dict(zip(columns, history))
    moved["id"] = db.execute("SELECT MAX(id) + 1 FROM stage_history").fetchone()[0]
    moved["created_time"] = (T0 + timedelta(minutes=1)).isoformat()
    assert changed(f"INSERT INTO stage_history ({','.join(moved)}) VALUES ({','.join('?' * len(moved))})",
                   list(moved.values())) == 1
    task_deal = db.execute("SELECT deal_id FROM tasks WHERE status <> 5 AND deal_id IS NOT NULL LIMIT 1").fetchone()[0]
    assert changed("UPDATE tasks SET status = 5, closed_date = ? WHERE deal_id = ? AND status <> 5",
                   [later.isoformat(), task_deal]) == 1
    assert changed("INSERT INTO activities (id, deal_id, provider_id, subject, completed, responsible_id, created, "
                   "last_updated, raw) VALUES (1, ?, 'CRM_TODO', 'Позвонить', 0, 1, ?, ?, '{}')",
                   [task_deal, later.isoformat(), later.isoformat()]) == 1  # a to-do: R11's activity
    assert changed("DELETE FROM activities WHERE id = 1") == 1
    contact, named = db.execute("SELECT contact_id, COUNT(*) FROM deals WHERE contact_id IS NOT NULL AND deleted = 0 "
                                "GROUP BY contact_id ORDER BY 2 DESC LIMIT 1").fetchone()
    assert named > 1
    assert changed("UPDATE contacts SET raw = json_set(raw, '$.PHONE', json('[]')) WHERE id = ?", [contact]) == named
    assert changed("UPDATE deals SET deleted = 1 WHERE id = ?", [deal_id]) == 0  # gone: nothing to judge, rows resolve
    assert cache.count("judged", "deal_id = ?", [deal_id]) == 0
    assert changed("UPDATE deals SET deleted = 0 WHERE id = ?", [deal_id]) == 1
    won = db.execute("SELECT id FROM deals WHERE stage_semantic = 'S' LIMIT 1").fetchone()[0]
    assert changed("INSERT INTO actions (idempotency_key, marker, run_id, planned, updated, rule, deal_id, kind, method, "
                   "payload, status, attempts, crm_ids) VALUES ('k', 'm', 'r', 'x', 'x', 'R3', ?, 'create_task', "
                   "'tasks.task.add', '{}', 'done', 1, '[]')", [won]) == 1
    assert baseline < 100


def test_a_change_of_the_regulation_judges_every_deal_again(cache: Cache, mappings: Mappings, tmp_path: Path) -> None:
    audited(cache, mappings, T0)
    text = (ROOT / "mappings" / "regulation.yaml").read_text(encoding="utf-8")
    folder = tmp_path / "mappings"
    folder.mkdir()
    for source in (ROOT / "mappings").iterdir():
        if source.is_file():
            (folder / source.name).write_bytes(source.read_bytes())
    assert "stale_after: 45d" in text
    (folder / "regulation.yaml").write_text(text.replace("stale_after: 45d", "stale_after: 3d", 1), encoding="utf-8")
    changed = load_mappings(folder)
    deals, judged = audited(cache, changed, T0)
    assert judged == deals


def test_without_record_the_audit_writes_nothing(cache: Cache, mappings: Mappings) -> None:
    audited(cache, mappings, T0)
    before = (cache.query("SELECT * FROM judged ORDER BY deal_id"), cache.query("SELECT * FROM violations"))
    run = audit_cache(cache, mappings, T0 + timedelta(days=2), record=False)
    assert [printed(v) for v in run.violations] == afresh(cache, mappings, T0 + timedelta(days=2))
    assert (cache.query("SELECT * FROM judged ORDER BY deal_id"), cache.query("SELECT * FROM violations")) == before
