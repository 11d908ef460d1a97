"""kill -9 at many points of an enforce run, then resume: the portal must hold the plan, each action once.

The run is a process of its own (tests/integration/kill_child.py) against the sandbox portal served by this one. It
is killed with SIGKILL right after the intents of a batch are committed, while the portal runs a batch (the portal
goes on with it), after the portal answered and after the outcomes are committed, at the first and at later batches,
for deal writes and for messages. After each kill the next run resumes; the portal is then compared with the plan
made before the first run: every planned action is on the portal exactly once, and nothing is recorded otherwise
than the portal holds it (done = there once; cancelled or failed = not there; no write of crmbridge twice).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from crmbridge.cache.store import Cache, open_cache
from crmbridge.enforce.plan import Action, ActionKind, same_value
from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox.methods import ApiError
from tests.integration.enforce_kit import SETTLING, WRITE_METHODS, fast_client, kill_volume, run, synced, writes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"\[crmbridge:[0-9a-f]+\]")


def child(portal: SandboxPortal, cache_path: Path, step: str = "none", occurrence: int = 1,
          kill_at_write: int | None = None) -> int:
    """One enforce run in its own process; it kills itself at `step` (occurrence n), or this process kills it at the
    portal's `kill_at_write`-th write command of a batch (mid-batch). Returns its exit code (-9 when killed)."""
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.kill_child", portal.webhook_url,
                                str(cache_path), step, str(occurrence)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seen = 0

    def mid_batch(method: str) -> None:
        nonlocal seen
        if method in WRITE_METHODS:
            seen += 1
            if seen == kill_at_write:
                os.kill(process.pid, signal.SIGKILL)  # the caller dies; the portal runs the rest of the batch
                process.wait(timeout=30)

    portal.on_command = mid_batch if kill_at_write is not None else None
    try:
        _, errors = process.communicate(timeout=300)
    finally:
        portal.on_command = None
    assert process.returncode in (0, -signal.SIGKILL), errors
    return process.returncode


def planned(portal: SandboxPortal, cache: Cache) -> list[Action]:
    """The plan before any write (a dry run), the reference every resumed run is compared with."""
    return run(fast_client(portal), cache, kill_volume(), SETTLING, dry_run=True).to_write


def assert_portal_matches(plan: list[Action], portal: SandboxPortal, cache: Cache) -> None:
    rows = {row["idempotency_key"]: row for row in cache.query("SELECT * FROM actions")}
    state = portal.state
    on_portal: Counter[str] = Counter()
    with state.lock:
        for task in state.tasks.rows.values():
            on_portal.update(MARKER.findall(task.get("description") or ""))
        for comment in state.comments.rows.values():
            on_portal.update(MARKER.findall(comment.get("COMMENT") or ""))
        for message in state.messages:
            on_portal.update(MARKER.findall(message.get("text") or ""))
        deals = {deal_id: dict(deal) for deal_id, deal in state.deals.rows.items()}
    assert all(count == 1 for count in on_portal.values()), [m for m, c in on_portal.items() if c > 1]
    for action in plan:  # every planned action, once
        row = rows.get(action.idempotency_key)
        assert row is not None and row["status"] == "done", (action.idempotency_key, row and row["status"])
        if action.kind in (ActionKind.CREATE_TASK, ActionKind.CREATE_TODO, ActionKind.COMMENT):
            assert on_portal[action.marker] == 1, action.idempotency_key
        elif action.kind is ActionKind.NOTIFY:
            carrier = rows[json.loads(row["result"])["message"]]
            assert carrier["status"] == "done" and on_portal[carrier["marker"]] == 1, action.idempotency_key
        elif action.kind in (ActionKind.SET_FIELD, ActionKind.REASSIGN):
            deal = deals[int(action.deal)]
            assert all(same_value(deal.get(name), value) for name, value in action.params["fields"].items())
    for key, row in rows.items():  # nothing recorded otherwise than the portal holds it
        if row["kind"] in (ActionKind.CREATE_TASK.value, ActionKind.COMMENT.value, ActionKind.MESSAGE.value):
            assert on_portal[row["marker"]] == (1 if row["status"] == "done" else 0), (key, row["status"])
        assert row["status"] in ("done", "cancelled"), (key, row["status"], row["error"])
    recorded = {row["marker"] for row in rows.values() if row["status"] == "done"}
    assert set(on_portal) <= recorded  # no write of crmbridge on the portal that the audit log does not hold as done


def assert_settled(portal: SandboxPortal, cache: Cache) -> None:
    before = writes(portal)
    again = run(fast_client(portal), cache, kill_volume(), SETTLING)
    assert again.to_write == [] and again.owed == 0 and writes(portal) == before


KILLS: list[tuple[str, int | None, int | None]] = [
    ("intents", 1, None), ("intents", 3, None), ("answer", 1, None), ("answer", 2, None), ("outcomes", 1, None),
    ("outcomes", 2, None), ("none", None, 7), ("none", None, 63), ("message_intents", 1, None),
    ("message_answer", 1, None), ("message_outcomes", 1, None),
]


@pytest.mark.parametrize(("step", "occurrence", "write"), KILLS, ids=lambda value: str(value))
def test_killed_at_a_point_then_resumed_the_portal_holds_the_plan_once(
        make_portal: Callable[..., SandboxPortal], tmp_path: Path, step: str, occurrence: int | None,
        write: int | None) -> None:
    cache_path = tmp_path / "cache.db"
    cache = open_cache(cache_path)
    portal, _ = synced(make_portal, cache, deals=300)
    plan = planned(portal, cache)
    assert len(plan) > 100
    code = child(portal, cache_path, step, occurrence or 1, write)
    assert code == -signal.SIGKILL  # it died at that point (kill -9), not at the end
    resumed = run(fast_client(portal), cache, kill_volume(), SETTLING)  # the lock of the dead run is gone at once
    assert resumed.execution is not None and resumed.execution.failed == 0 and resumed.execution.unknown == 0
    assert_portal_matches(plan, portal, cache)
    assert_settled(portal, cache)
    cache.close()


def test_killed_again_and_again_while_resuming_the_portal_still_holds_the_plan_once(
        make_portal: Callable[..., SandboxPortal], tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.db"
    cache = open_cache(cache_path)
    portal, _ = synced(make_portal, cache, deals=300)
    plan = planned(portal, cache)
    kills = [("answer", 1, None), ("intents", 1, None), ("none", None, 11), ("message_intents", 1, None),
             ("message_answer", 1, None)]
    died = [child(portal, cache_path, step, occurrence or 1, write) for step, occurrence, write in kills]
    assert died.count(-signal.SIGKILL) >= 4  # a resumed run may finish before it reaches a later kill point
    assert child(portal, cache_path) == 0
    assert_portal_matches(plan, portal, cache)
    assert_settled(portal, cache)
    cache.close()


def test_a_revert_whose_comment_did_not_land_before_the_kill_gets_its_comment(
        make_portal: Callable[..., SandboxPortal], tmp_path: Path) -> None:
    """Issue 8, item 4: killed after a revert landed and before its explanation was written, the next run writes the
    comment, although the re-read deal no longer breaks the rule (nothing plans the revert's group again)."""
    cache_path = tmp_path / "cache.db"
    cache = open_cache(cache_path)
    portal, _ = synced(make_portal, cache, deals=300)
    plan = planned(portal, cache)
    reverts = [a for a in plan if a.kind is ActionKind.REVERT_STAGE]
    assert reverts
    comment = next(a for a in plan if a.kind is ActionKind.COMMENT and a.group == reverts[0].group)
    process: subprocess.Popen[str] | None = None
    comments = 0

    def comment_fails_then_caller_dies(method: str) -> None:
        nonlocal comments
        if method == "crm.timeline.comment.add":
            comments += 1
            if comments == 1 and process is not None:  # the first revert's comment: the portal fails it, the caller dies
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                raise ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error")

    portal.on_command = comment_fails_then_caller_dies
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.kill_child", portal.webhook_url,
                                str(cache_path), "none", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.communicate(timeout=300)
    portal.on_command = None
    assert process.returncode == -signal.SIGKILL
    reverted_deal = int(reverts[0].deal)
    assert portal.state.deals.rows[reverted_deal]["STAGE_ID"] == reverts[0].params["fields"]["STAGE_ID"]
    assert not any(comment.marker in (c.get("COMMENT") or "") for c in portal.state.comments.rows.values())
    resumed = run(fast_client(portal), cache, kill_volume(), SETTLING)
    assert comment.idempotency_key not in {a.idempotency_key for a in resumed.to_write}  # not planned any more...
    assert resumed.owed >= 1  # ...but owed: its revert landed
    assert sum(comment.marker in (c.get("COMMENT") or "") for c in portal.state.comments.rows.values()) == 1
    assert_portal_matches(plan, portal, cache)
    cache.close()
