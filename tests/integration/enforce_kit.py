"""What the enforcement integration tests share: the shipped files, a fast client, a synced sandbox, the checks."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from crmbridge.cache.store import Cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.enforce.plan import ActionKind
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.mapping.load import Mappings, load_mappings
from crmbridge.model import Mode
from crmbridge.sandbox import SandboxPortal
from crmbridge.sync import Syncer

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
#: every kind of action: reverts (R1..R3), probability (R4), next contact (R5), reassign (R7), segment (R10)
ALL_KINDS = {"R1": Mode.ENFORCE, "R2": Mode.ENFORCE, "R3": Mode.ENFORCE, "R4": Mode.ENFORCE, "R5": Mode.ENFORCE,
             "R7": Mode.ENFORCE, "R10": Mode.ENFORCE}
#: without R10: reverting a won deal changes which deal is its client's last purchase, so R10 may then
#: (rightly) judge another deal of the client; every other correction settles in one run
SETTLING = {rule: mode for rule, mode in ALL_KINDS.items() if rule != "R10"}
#: the stage rules acting on closed deals however long ago they closed (`closed_look_back` of ten years): the
#: sandbox's full volume of breaches, for tests of delivery at scale rather than of what is history
EVERY_CLOSED_DEAL = {rule: {"closed_look_back": "3650d"} for rule in ("R1", "R2", "R3", "R4", "R6")}
WRITE_METHODS = ("tasks.task.add", "crm.deal.update", "crm.timeline.comment.add", "im.notify.system.add", "im.message.add")


def writes(portal: SandboxPortal) -> int:
    calls = portal.stats.calls
    return sum(calls.get(method, 0) for method in WRITE_METHODS)


def regulation_with(loaded: Mappings, **changes: Any) -> Mappings:
    """The files with parts of the regulation changed: `changes` are regulation keys, a dict merges into the key's
    value (notifications={"max_per_person_per_day": 1}, rules={"R4": {"notify": "individual"}}). Validated anew, as
    the file would be (model_copy would keep the spec's memo of per-direction rules)."""
    data = loaded.regulation.model_dump()
    for key, value in changes.items():
        data[key] = _merged(data[key], value) if isinstance(value, Mapping) else value
    return replace(loaded, regulation=type(loaded.regulation).model_validate(data))


def _merged(base: Any, change: Mapping[str, Any]) -> Any:
    if not isinstance(base, Mapping):
        return change
    return {**base, **{key: _merged(base.get(key), value) if isinstance(value, Mapping) else value
                       for key, value in change.items()}}


def kill_volume() -> Mappings:
    """The shipped files acting on long-closed deals too (`EVERY_CLOSED_DEAL`): the crash tests kill a run at the n-th
    batch of writes or messages, so they need the plan's volume they were written for (`closed_look_back` cut it)."""
    return regulation_with(shipped(), rules=EVERY_CLOSED_DEAL)


def any_hour(loaded: Mappings) -> Mappings:
    """Messages going out at any hour (the shipped regulation holds them outside working hours, and these tests run
    at any time of day; test_digests covers holding)."""
    return regulation_with(loaded, notifications={"outside_working_hours": "send"})


def shipped(*, any_hour_: bool = True) -> Mappings:
    loaded = load_mappings(MAPPINGS)
    return any_hour(loaded) if any_hour_ else loaded


def working_moment(days_ahead: int = 1, hour: int = 11, *, after: datetime | None = None) -> datetime:
    """A moment at `hour` Moscow time on a working day of the shipped calendar: the first one `days_ahead` or more
    days after today (or after the day of `after`)."""
    zone = ZoneInfo("Europe/Moscow")
    holidays = set(load_mappings(MAPPINGS).regulation.calendar.holidays)  # type: ignore[union-attr]
    day = (after or datetime.now(zone)).astimezone(zone).date() + timedelta(days=days_ahead)
    while day.weekday() >= 5 or day in holidays:
        day += timedelta(days=1)
    return datetime.combine(day, time(hour), zone)


def fast_client(portal: SandboxPortal | str, **options: Any) -> Bitrix24Client:
    url = portal if isinstance(portal, str) else portal.webhook_url
    return Bitrix24Client(url, rate=1000, burst=1000, backoff_initial=0.01, backoff_max=0.05, **options)


def synced(make_portal: Callable[..., SandboxPortal], cache: Cache, *, deals: int = 200, seed: int = 3,
           **options: Any) -> tuple[SandboxPortal, Bitrix24Client]:
    portal = make_portal(deals=deals, seed=seed, limits=False, **options)
    client = fast_client(portal)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    return portal, client


def run(client: Bitrix24Client, cache: Cache, mappings: Mappings, modes: Mapping[str, Mode] = ALL_KINDS,
        **options: Any) -> EnforceReport:
    return enforce(client, cache, mappings, modes=modes, sleep=lambda seconds: None, **options)


def done_rows(cache: Cache) -> list[dict[str, Any]]:
    return cache.query("SELECT * FROM actions WHERE status = 'done' ORDER BY id")


def assert_each_lands_once(portal: SandboxPortal, cache: Cache) -> None:
    """Every done action is in the portal exactly once, and nothing crmbridge wrote is there twice."""
    state = portal.state
    task_markers = Counter(marker for task in state.tasks.rows.values()
                           for marker in _markers(task.get("description")))
    comment_markers = Counter(marker for comment in state.comments.rows.values()
                              for marker in _markers(comment.get("COMMENT")))
    message_markers = Counter(marker for message in state.messages for marker in _markers(message.get("text")))
    for row in done_rows(cache):
        if row["kind"] == ActionKind.CREATE_TASK.value:
            assert task_markers[row["marker"]] == 1, row["idempotency_key"]
        elif row["kind"] == ActionKind.COMMENT.value:
            assert comment_markers[row["marker"]] == 1, row["idempotency_key"]
        elif row["kind"] == ActionKind.MESSAGE.value:
            assert message_markers[row["marker"]] == 1, row["idempotency_key"]
        elif row["kind"] == ActionKind.NOTIFY.value:  # a notice is done when the message carrying it is
            carrier = json.loads(row["result"])["message"]
            assert cache.count("actions", "idempotency_key = ? AND status = 'done'", [carrier]) == 1
    assert all(count == 1 for count in task_markers.values())
    assert all(count == 1 for count in message_markers.values())
    assert all(count == 1 for count in comment_markers.values())


def _markers(text: Any) -> list[str]:
    """Every [crmbridge:<hash>] in a text."""
    return re.findall(r"\[crmbridge:[0-9a-f]+\]", "" if text is None else str(text))
