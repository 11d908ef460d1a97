"""Stage tasks as CRM to-dos (`kind: todo`) against the sandbox portal: synced, created once, reconciled after a lost answer."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import Cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.connectors.bitrix24.transport import RawResponse, RequestsTransport, TransportError
from crmbridge.enforce.plan import ActionKind
from crmbridge.enforce.run import evaluate
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import TODO, Mode
from crmbridge.sandbox import SandboxPortal
from crmbridge.sync import Syncer
from tests.integration.enforce_kit import MAPPINGS, fast_client, run, synced

pytestmark = pytest.mark.integration

#: the B2C direction's two stage tasks become to-dos; every other stage keeps its task
TODO_TITLES = ("Связаться с клиентом и выставить счёт", "Получить оплату")
#: only R3 acts: it creates the stage tasks and to-dos; every other rule just records
R3_ONLY = {f"R{n}": Mode.AUDIT for n in range(1, 12)} | {"R3": Mode.WARN}


@pytest.fixture
def todo_mappings(tmp_path: Path) -> Mappings:
    directory = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, directory)
    path = directory / "regulation.yaml"
    text = path.read_text(encoding="utf-8")
    for title, deadline in zip(TODO_TITLES, ("1d", "3d"), strict=True):
        before = f"task: {{title: {title}, deadline: {deadline}}}"
        assert text.count(before) == 1
        text = text.replace(before, before[:-1] + ", kind: todo}")
    path.write_text(text, encoding="utf-8")
    loaded = load_mappings(directory)
    b2c = loaded.regulation.directions["b2c"]
    assert [stage.task.kind for stage in b2c.stages] == [TODO, TODO]
    return loaded


def todo_markers(portal: SandboxPortal) -> Counter[str]:
    return Counter(marker for row in portal.state.activities.values()
                   for marker in re.findall(r"\[crmbridge:[0-9a-f]+\]", str(row.get("DESCRIPTION") or "")))


def test_sync_reads_the_deals_to_dos_full_and_incremental(make_portal, cache) -> None:
    portal = make_portal(deals=30, seed=3, limits=False)
    deal_id = next(iter(portal.state.deals.rows))
    first = portal.state.add_todo(2, deal_id, "2026-06-01T10:00:00+03:00", title="Позвонить", responsible_id=3,
                                  author_id=1)
    client = fast_client(portal)
    summary = Syncer(Bitrix24Reader(client), cache).run(full=True)
    assert summary.todos_read == 1
    assert cache.query("SELECT id, deal_id, completed FROM activities") == [{"id": first, "deal_id": deal_id, "completed": 0}]
    portal.state.complete_activity(first)
    second = portal.state.add_todo(2, deal_id, "2026-06-02T10:00:00+03:00", title="Отправить КП", responsible_id=3,
                                   author_id=1)
    incremental = Syncer(Bitrix24Reader(client), cache).run()
    assert incremental.mode == "incremental" and incremental.todos_read == 2  # the completed one and the new one
    rows = {row["id"]: row["completed"] for row in cache.query("SELECT id, completed FROM activities")}
    assert rows == {first: 1, second: 0}
    assert cache.syncs.get("activities").status == "done"


def test_enforce_creates_one_to_do_per_deal_and_a_second_run_writes_nothing(make_portal, cache, todo_mappings) -> None:
    portal, client = synced(make_portal, cache)
    report = run(client, cache, todo_mappings, R3_ONLY)
    assert report.execution is not None and report.execution.failed == 0 and report.execution.unknown == 0
    todos = [a for a in report.to_write if a.kind is ActionKind.CREATE_TODO]
    assert todos and {a.params["title"] for a in todos} <= set(TODO_TITLES)
    assert not [a for a in report.to_write if a.kind is ActionKind.CREATE_TASK and a.params["fields"]["TITLE"] in TODO_TITLES]
    assert len({a.deal for a in todos}) == len(todos)  # one stage to-do per deal
    markers = todo_markers(portal)
    assert sorted(markers) == sorted(a.marker for a in todos) and set(markers.values()) == {1}
    for action in todos:
        (row,) = [row for row in portal.state.deal_todos(int(action.deal)) if action.marker in row["DESCRIPTION"]]
        assert row["SUBJECT"] == action.params["title"] and row["RESPONSIBLE_ID"] == str(action.params["responsibleId"])
    # re-synced after writing: the to-dos are in the cache and R3 no longer flags their deals as missing one
    assert report.after is not None
    flagged = {v.deal for vs in report_violations(cache, todo_mappings).values() for v in vs
               if v.rule == "R3" and any(item.startswith("task:") for item in v.missing)}
    assert not flagged & {a.deal for a in todos}
    before = dict(portal.stats.calls)
    second = run(client, cache, todo_mappings, R3_ONLY)
    assert second.to_write == [] and second.execution is not None and second.execution.sent == 0
    assert portal.stats.calls.get("crm.activity.todo.add", 0) == before.get("crm.activity.todo.add", 0)
    assert todo_markers(portal) == markers


def report_violations(cache: Cache, mappings: Mappings) -> Mapping[str, list[Any]]:
    """The cache's violations now, with only R3 acting (not recorded: the run's own ledger stays as it left it)."""
    return evaluate(cache, mappings, datetime.now(UTC), modes=R3_ONLY, record=False).violations


class LosingTransport(RequestsTransport):
    """Delivers the first write batch that adds to-dos, then loses the portal's answer (as a dropped connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def post(self, url: str, *, body: bytes, headers: Mapping[str, str], timeout: tuple[float, float]) -> RawResponse:
        answer = super().post(url, body=body, headers=headers, timeout=timeout)
        if not self.lost and url.endswith("/batch.json") and b"crm.activity.todo.add" in body:
            self.lost += 1
            raise TransportError("connection reset after the request was sent")
        return answer


def test_a_lost_answer_is_reconciled_by_looking_up_the_to_do_with_no_duplicate(make_portal, cache, todo_mappings) -> None:
    portal, _ = synced(make_portal, cache)
    transport = LosingTransport()
    client = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000, backoff_initial=0.01, backoff_max=0.05,
                            transport=transport)
    report = run(client, cache, todo_mappings, R3_ONLY)
    assert transport.lost == 1
    execution = report.execution
    assert execution is not None and execution.failed == 0 and execution.unknown == 0
    assert execution.found_after_lost_answer > 0
    assert portal.stats.calls.get("crm.activity.list", 0) > 0  # looked up in the CRM, not sent again blindly
    todos = [a for a in report.to_write if a.kind is ActionKind.CREATE_TODO]
    markers = todo_markers(portal)
    assert sorted(markers) == sorted(a.marker for a in todos) and set(markers.values()) == {1}
    found = cache.query("SELECT result, crm_ids FROM actions WHERE kind = 'create_todo' AND status = 'done'")
    assert len(found) == len(todos) and all('"todo_id"' in row["result"] for row in found)
    again = run(fast_client(portal), cache, todo_mappings, R3_ONLY)
    assert again.execution is not None and again.execution.sent == 0


def test_with_faults_every_to_do_lands_exactly_once(make_portal, cache, todo_mappings) -> None:
    portal, client = synced(make_portal, cache, deals=150, slow_seconds=(0.05, 0.1))
    portal.faults = 0.3
    report = run(client, cache, todo_mappings, R3_ONLY)
    assert report.execution is not None and report.execution.failed == 0 and report.execution.unknown == 0
    todos = [a for a in report.to_write if a.kind is ActionKind.CREATE_TODO]
    markers = todo_markers(portal)
    assert todos and sorted(markers) == sorted(a.marker for a in todos) and set(markers.values()) == {1}
    portal.faults = 0.0
    again = run(client, cache, todo_mappings, R3_ONLY)
    assert again.execution is not None and again.execution.sent == 0
