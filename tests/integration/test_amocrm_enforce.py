"""Enforcement on the sandbox amoCRM account over loopback: every action kind lands once, faults, kills, request counts."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import Cache
from crmbridge.connectors.http import RawResponse, RequestsTransport
from crmbridge.enforce.audit import AuditLog
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Mode
from crmbridge.sandbox.amocrm import SandboxAccount
from crmbridge.sandbox.amocrm import catalog as amo
from tests.integration.amocrm_kit import amo_client, amo_syncer, make_account  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
#: every rule that corrects the CRM in enforce: reverts (R1-R3), probability (R4), next contact (R5),
#: reassignment (R7), segment (R10); the rest warn (tasks, notifications)
ENFORCING = {rule: Mode.ENFORCE for rule in ("R1", "R2", "R3", "R4", "R5", "R7", "R10")}
#: without R10: reverting a won deal changes which deal is its client's last purchase, so R10 may then
#: plan again on the next run (the Bitrix24 tests settle the same way)
SETTLING = {rule: mode for rule, mode in ENFORCING.items() if rule != "R10"}


@pytest.fixture
def mappings() -> Mappings:
    return load_mappings(MAPPINGS, crm="amocrm")


def run(client: Any, cache: Cache, mappings: Mappings, **options: Any) -> EnforceReport:
    options.setdefault("modes", SETTLING)
    return enforce(client, cache, mappings, sleep=lambda seconds: None, **options)


def synced(make_account: Any, cache: Cache, **options: Any) -> SandboxAccount:
    options.setdefault("rate", 100)
    account = make_account(deals=options.pop("deals", 400), seed=options.pop("seed", 3), **options)
    amo_syncer(account, cache).run()
    return account


def assert_each_lands_once(account: SandboxAccount, cache: Cache) -> None:
    """Every done action is in the account exactly once: its task or note by marker, its lead update read back."""
    done = cache.query("SELECT idempotency_key, marker, kind, method, payload, crm_ids FROM actions WHERE status = 'done'")
    assert done
    with account.state.lock:
        texts = Counter()
        for task in account.state.tasks.values():
            for marker in {part for part in task["text"].split() if part.startswith("[crmbridge:")}:
                texts[marker] += 1
        for note in account.state.notes.values():
            for marker in {part for part in note["params"]["text"].split() if part.startswith("[crmbridge:")}:
                texts[marker] += 1
        leads = {lead_id: dict(lead) for lead_id, lead in account.state.leads.items()}
    for row in done:
        if row["method"] in ("POST /api/v4/tasks", "POST /api/v4/leads/notes"):
            assert texts[row["marker"]] == 1, f"{row['idempotency_key']} is in the account {texts[row['marker']]} times"
            assert json.loads(row["crm_ids"])
    assert sum(texts.values()) == sum(1 for row in done if row["method"] != "PATCH /api/v4/leads")
    reassigned = [json.loads(row["payload"]) for row in done if row["kind"] == "reassign"]
    for item in reassigned:
        assert leads[item["id"]]["responsible_user_id"] == item["responsible_user_id"]


def test_every_action_kind_lands_once_in_amocrm_terms(make_account: Any, cache: Cache, mappings: Mappings) -> None:
    # the account lives a week behind, so a lead added now has waited past the SLA in any week (R7 reassigns it)
    account = make_account(deals=300, seed=3, rate=100, now=datetime.now(UTC) - timedelta(days=7))
    new_lead = account.state.add_lead("Входящая заявка", amo.PIPELINE_IDS[3], responsible=amo.USER_IDS[6])
    amo_syncer(account, cache).run()
    client = amo_client(account)
    first = run(client, cache, mappings, modes=ENFORCING)
    kinds = Counter(action.kind.value for action in first.to_write)
    assert set(kinds) == {"create_task", "revert_stage", "comment", "set_field", "reassign", "notify"}
    execution = first.execution
    assert execution is not None and execution.failed == 0 and execution.unknown == 0
    assert execution.done == len(first.to_write)
    # whole arrays: at most 50 items per request, A/50 + 5 requests at most
    assert execution.http_requests <= len(first.to_write) / 50 + 5
    assert first.after is not None and first.after.violations < first.before.violations
    assert_each_lands_once(account, cache)
    # what landed is amoCRM's own: a reverted lead has a lead_status_changed event by the integration's user
    revert = next(json.loads(row["payload"]) for row in cache.query(
        "SELECT payload FROM actions WHERE kind = 'revert_stage' AND status = 'done' LIMIT 1"))
    assert account.state.leads[revert["id"]]["status_id"] == revert["status_id"]
    assert any(event["value_after"][0]["lead_status"]["id"] == revert["status_id"]
               and event["created_by"] == amo.USER_IDS[1] for event in account.state.lead_events(revert["id"]))
    # the new lead went to another member of the B2C team, who got a task saying so
    assert account.state.leads[new_lead]["responsible_user_id"] in {amo.USER_IDS[7], amo.USER_IDS[8]}
    # a notification is a task for its recipient on the lead, due tomorrow
    notice = next(json.loads(row["payload"]) for row in cache.query(
        "SELECT payload FROM actions WHERE kind = 'notify' AND status = 'done' LIMIT 1"))
    assert notice["entity_type"] == "leads" and "[url=" not in notice["text"]
    assert notice["complete_till"] > datetime.now(UTC).timestamp()


def test_a_second_run_writes_nothing(make_account: Any, cache: Cache, mappings: Mappings) -> None:
    account = synced(make_account, cache)
    client = amo_client(account)
    first = run(client, cache, mappings)
    assert first.execution is not None and first.execution.done > 50
    writes = account.stats.calls.get("POST /api/v4/tasks", 0) + account.stats.calls.get("PATCH /api/v4/leads", 0)
    again = run(client, cache, mappings)
    assert again.execution is not None and again.execution.sent == 0 and again.to_write == []
    assert account.stats.calls.get("POST /api/v4/tasks", 0) + account.stats.calls.get("PATCH /api/v4/leads", 0) == writes


def test_twenty_percent_faults_still_land_each_action_once(make_account: Any, cache: Cache,
                                                          mappings: Mappings) -> None:
    account = synced(make_account, cache, seed=9)
    account.faults = 0.2
    account.slow_seconds = (0.05, 0.1)
    client = amo_client(account, max_attempts=20, backoff_initial=0.01, backoff_max=0.1)
    for _ in range(6):  # a run leaves what it could not settle to the next, as a scheduled job would
        report = run(client, cache, mappings)
        if report.execution is not None and report.execution.sent == 0 and not AuditLog(cache).pending():
            break
    assert sum(account.stats.faults.values()) > 0
    assert AuditLog(cache).pending() == []
    assert cache.count("actions", "status = 'failed'") == 0
    account.faults = 0.0
    assert_each_lands_once(account, cache)
    assert run(client, cache, mappings).execution.sent == 0


def in_account(account: SandboxAccount, row: Mapping[str, Any]) -> bool:
    """Whether an action's write is in the account: its task or note by marker, its lead update by the lead's values."""
    from crmbridge.connectors.amocrm.writer import _holds

    payload = json.loads(row["payload"])
    with account.state.lock:
        if row["method"] == "PATCH /api/v4/leads":
            return _holds(account.state.leads[payload["id"]], payload)
        texts = [task["text"] for task in account.state.tasks.values()] + \
            [note["params"]["text"] for note in account.state.notes.values()]
    return any(row["marker"] in text for text in texts)


class DyingTransport(RequestsTransport):
    """Dies (KeyboardInterrupt) right after the account answered the Nth write request: written, not recorded."""

    def __init__(self, die_after: int) -> None:
        super().__init__()
        self.die_after = die_after
        self.writes = 0

    def request(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str],
                timeout: tuple[float, float]) -> RawResponse:
        answer = super().request(method, url, body=body, headers=headers, timeout=timeout)
        if method in ("POST", "PATCH"):
            self.writes += 1
            if self.writes == self.die_after:
                raise KeyboardInterrupt
        return answer


# the run's four write requests (notes, a batch of tasks, the lead updates, the second batch of tasks): killed after
# each; R5 no longer dates clients postponed past their last option, which made a fifth
@pytest.mark.parametrize("die_after", [1, 2, 3, 4])
def test_a_run_killed_after_a_write_is_reconciled_without_duplicates(make_account: Any, cache: Cache,
                                                                     mappings: Mappings, die_after: int) -> None:
    account = synced(make_account, cache)
    dying = amo_client(account, transport=DyingTransport(die_after))
    with pytest.raises(KeyboardInterrupt):
        run(dying, cache, mappings, sync=False)
    audit = AuditLog(cache)
    pending = audit.pending()
    # the killed round's intents: its requests before the kill landed (never recorded as done), the rest did not
    landed = [row for row in pending if in_account(account, row)]
    assert pending and landed
    resumed = run(amo_client(account), cache, mappings)
    # every kind is found again on amoCRM: tasks and notes (notifications too) by marker, lead updates read back
    assert resumed.reconciled_found == len(landed)
    assert resumed.reconciled_unknown == len(pending) - len(landed) and resumed.reconciled_unresolved == 0
    # notes and tasks go before the lead updates: a revert is never left without the note saying why
    assert resumed.cancelled == 0
    assert resumed.execution is not None and resumed.execution.failed == 0
    assert audit.pending() == []
    assert_each_lands_once(account, cache)
    assert run(amo_client(account), cache, mappings).execution.sent == 0


def test_a_stage_task_the_regulation_wants_as_a_to_do_is_a_task_and_made_once(make_account: Any, cache: Cache,
                                                                              tmp_path: Path) -> None:
    regulation = (MAPPINGS / "regulation.yaml").read_text(encoding="utf-8")
    (tmp_path / "regulation.yaml").write_text(
        regulation.replace("          deadline: 5d\n          must_complete: true",
                           "          deadline: 5d\n          must_complete: true\n          kind: todo", 1),
        encoding="utf-8")
    (tmp_path / "amocrm.yaml").write_text((MAPPINGS / "amocrm.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    todo_mappings = load_mappings(tmp_path, crm="amocrm")
    account = synced(make_account, cache)
    client = amo_client(account)
    first = run(client, cache, todo_mappings, modes={"R3": Mode.WARN})
    todos = [a for a in first.to_write if a.kind.value == "create_todo"]
    assert todos and all(a.method == "POST /api/v4/tasks" for a in todos)
    assert run(client, cache, todo_mappings, modes={"R3": Mode.WARN}).to_write == []
