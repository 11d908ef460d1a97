"""Writes: updates move DATE_MODIFY and write stage history; deal events reach an outgoing-webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests

from crmbridge.sandbox import SandboxPortal

NOW = 1_780_000_000.0  # a pinned portal clock: 2026-05-28

pytestmark = pytest.mark.integration


@pytest.fixture()
def fresh() -> Iterator[SandboxPortal]:
    with SandboxPortal(deals=60, seed=3, limits=False, now=NOW) as p:
        yield p


def _open_deal(p: SandboxPortal, category: int) -> dict[str, Any]:
    return next(d for d in p.state.deals.rows.values()
                if d["CLOSED"] == "N" and d["CATEGORY_ID"] == str(category))


def test_update_moves_stage_and_writes_history(fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    deal = _open_deal(fresh, 0)
    deal_id = int(deal["ID"])
    before = len(fresh.state.deal_history(deal_id))
    old_modify = deal["DATE_MODIFY"]
    time.sleep(1.05)  # DATE_MODIFY has one-second resolution
    response = call(fresh, "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "WON", "COMMENTS": "оплачено"}})
    assert response.json()["result"] is True
    after = call(fresh, "crm.deal.get", {"id": deal_id}).json()["result"]
    assert after["STAGE_ID"] == "WON" and after["STAGE_SEMANTIC_ID"] == "S" and after["CLOSED"] == "Y"
    assert after["DATE_MODIFY"] > old_modify and after["MOVED_TIME"] == after["DATE_MODIFY"]
    history = call(fresh, "crm.stagehistory.list", {"entityTypeId": 2, "filter": {"OWNER_ID": deal_id},
                                                    "order": {"ID": "ASC"}}).json()["result"]["items"]
    assert len(history) == before + 1
    assert (history[-1]["TYPE_ID"], history[-1]["STAGE_ID"]) == (3, "WON")
    # an update that does not change the stage writes no history
    call(fresh, "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "WON"}})
    assert len(fresh.state.deal_history(deal_id)) == before + 1


def test_intermediate_move_and_pipeline_change(fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    deal_id = int(_open_deal(fresh, 1)["ID"])
    fresh.update_deal(deal_id, {"STAGE_ID": "C1:EXECUTING"})
    assert fresh.state.deal_history(deal_id)[-1]["TYPE_ID"] in (2,)
    # crm.deal.update cannot change the pipeline (CATEGORY_ID is immutable there) ...
    call(fresh, "crm.deal.update", {"id": deal_id, "fields": {"CATEGORY_ID": 2}})
    assert fresh.state.deals.rows[deal_id]["CATEGORY_ID"] == "1"
    # ... a portal user can
    fresh.update_deal(deal_id, {"CATEGORY_ID": 2, "STAGE_ID": "C2:NEW"})
    last = fresh.state.deal_history(deal_id)[-1]
    assert (last["TYPE_ID"], last["CATEGORY_ID"], last["STAGE_ID"]) == (5, 2, "C2:NEW")
    assert fresh.state.deals.rows[deal_id]["CATEGORY_ID"] == "2"


def test_add_writes_creation_history(fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    new_id = call(fresh, "crm.deal.add", {"fields": {"TITLE": "Новая", "CATEGORY_ID": 3, "OPPORTUNITY": 19999.99,
                                                     "UF_CRM_1700000105": "2026-05-01"}}).json()["result"]
    assert new_id == 61
    deal = fresh.state.deals.rows[new_id]
    assert (deal["STAGE_ID"], deal["OPPORTUNITY"], deal["UF_CRM_1700000105"]) == ("C3:NEW", "19999.99", "2026-05-01")
    assert deal["DATE_CREATE"].startswith("2026-05-2")  # the pinned clock, not the wall clock
    history = fresh.state.deal_history(new_id)
    assert [(h["TYPE_ID"], h["STAGE_ID"]) for h in history] == [(1, "C3:NEW")]


def test_write_methods_for_enforcement(fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    task = call(fresh, "tasks.task.add", {"fields": {"TITLE": "Позвонить", "RESPONSIBLE_ID": 3,
                                                     "UF_CRM_TASK": ["D_5"], "DEADLINE": "2026-06-01T10:00:00"}}).json()
    task_id = int(task["result"]["task"]["id"])
    assert task["result"]["task"]["responsibleId"] == "3"
    done = call(fresh, "tasks.task.update", {"taskId": task_id, "fields": {"STATUS": 5}}).json()["result"]["task"]
    assert done["status"] == "5" and done["closedDate"]
    got = call(fresh, "tasks.task.get", {"taskId": task_id, "select": ["ID", "UF_CRM_TASK"]}).json()["result"]["task"]
    assert got == {"id": str(task_id), "ufCrmTask": ["D_5"]}
    todo = call(fresh, "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 5, "deadline": "2026-06-01T10:00:00",
                                                 "title": "Перезвонить"}).json()
    assert todo["result"]["id"] >= 1
    comment = call(fresh, "crm.timeline.comment.add", {"fields": {"ENTITY_ID": 5, "ENTITY_TYPE": "deal",
                                                                  "COMMENT": "Нарушение регламента"}}).json()
    listed = call(fresh, "crm.timeline.comment.list", {"filter": {"ENTITY_ID": 5, "ENTITY_TYPE": "deal"}}).json()
    assert listed["result"][0]["ID"] == str(comment["result"]) and listed["total"] == 1
    upper = call(fresh, "crm.timeline.comment.add", {"FIELDS": {"ENTITY_ID": 5, "ENTITY_TYPE": "deal", "COMMENT": "x"}})
    assert upper.status_code == 400
    note = call(fresh, "im.notify.system.add", {"USER_ID": 2, "MESSAGE": "Сделка просрочена"}).json()
    assert isinstance(note["result"], int) and fresh.state.notifications[-1]["USER_ID"] == 2
    assert call(fresh, "im.notify.system.add", {"USER_ID": 2}).json()["error"] == "MESSAGE_EMPTY"


class _Receiver:
    """A tiny outgoing-webhook receiver collecting the form bodies it gets."""

    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                received.append(dict(parse_qsl(self.rfile.read(length).decode())))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/b24/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        deadline = time.time() + timeout
        while len(self.events) < count and time.time() < deadline:
            time.sleep(0.02)
        return self.events

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_deal_events_are_posted_form_encoded(call: Callable[..., requests.Response]) -> None:
    receiver = _Receiver()
    try:
        with SandboxPortal(deals=20, limits=False, events_url=receiver.url, events_delay=0.05,
                           application_token="tok123") as p:
            call(p, "crm.deal.update", {"id": 4, "fields": {"TITLE": "Обновлена"}})
            p.update_deal(5, {"COMMENTS": "из интерфейса"})
            new_id = call(p, "crm.deal.add", {"fields": {"TITLE": "Новая"}}).json()["result"]
            events = receiver.wait(3)
            # concurrent queue threads deliver them: Bitrix24 promises no order between events either
            assert sorted((e["event"], e["data[FIELDS][ID]"]) for e in events) == sorted([
                ("ONCRMDEALUPDATE", "4"), ("ONCRMDEALUPDATE", "5"), ("ONCRMDEALADD", str(new_id))])
            first = events[0]
            assert first["auth[application_token]"] == "tok123"
            assert first["auth[client_endpoint]"] == f"http://127.0.0.1:{p.port}/rest/"
            assert {"event_handler_id", "ts", "auth[domain]", "auth[server_endpoint]", "auth[member_id]"} <= set(first)
            assert p.stats.events_sent == 3
    finally:
        receiver.close()


def test_undeliverable_events_are_dropped_not_retried(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=5, limits=False, events_url="http://127.0.0.1:9/nowhere", events_delay=0.0) as p:
        p.update_deal(1, {"TITLE": "x"})
        deadline = time.time() + 5
        while p.stats.events_failed < 1 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert (p.stats.events_failed, p.stats.events_sent) == (1, 0)


def test_a_tag_replaces_earlier_notifications_only_with_the_application_id_the_docs_require(
        fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    # D im-notify-system-add.md: TAG is unique within an application; through a webhook it comes with CLIENT_ID
    for text in ("first", "second"):
        call(fresh, "im.notify.system.add", {"USER_ID": 2, "MESSAGE": text, "TAG": "crmbridge-x"})
    assert [n["MESSAGE"] for n in fresh.state.notifications if n.get("TAG") == "crmbridge-x"] == ["first", "second"]
    for text in ("third", "fourth"):
        call(fresh, "im.notify.system.add", {"USER_ID": 2, "MESSAGE": text, "TAG": "crmbridge-y", "CLIENT_ID": "app.1"})
    call(fresh, "im.notify.system.add", {"USER_ID": 2, "MESSAGE": "other app", "TAG": "crmbridge-y", "CLIENT_ID": "app.2"})
    tagged = [n["MESSAGE"] for n in fresh.state.notifications if n.get("TAG") == "crmbridge-y"]
    assert tagged == ["fourth", "other app"]


def test_chat_messages_are_read_back_newest_first_by_a_participant(
        fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    ids = [call(fresh, "im.message.add", {"DIALOG_ID": "3", "MESSAGE": f"digest {n}", "SYSTEM": "Y"}).json()["result"]
           for n in range(5)]
    assert all(isinstance(mid, int) for mid in ids)
    page = call(fresh, "im.dialog.messages.get", {"DIALOG_ID": "3", "LIMIT": 2}).json()["result"]
    assert [m["text"] for m in page["messages"]] == ["digest 4", "digest 3"] and page["messages"][0]["author_id"] == 1
    older = call(fresh, "im.dialog.messages.get", {"DIALOG_ID": "3", "LAST_ID": page["messages"][-1]["id"]}).json()
    assert [m["text"] for m in older["result"]["messages"]] == ["digest 2", "digest 1", "digest 0"]
    assert call(fresh, "im.dialog.messages.get", {"DIALOG_ID": "4"}).json()["result"]["messages"] == []
    assert call(fresh, "im.message.add", {"DIALOG_ID": "777", "MESSAGE": "x"}).json()["error"] == "USER_NOT_FOUND"
    assert call(fresh, "im.message.add", {"DIALOG_ID": "3", "MESSAGE": " "}).json()["error"] == "MESSAGE_EMPTY"


def test_a_notification_or_message_not_created_answers_false(call: Callable[..., requests.Response]) -> None:
    with SandboxPortal(deals=5, limits=False, not_created=1.0) as p:
        assert call(p, "im.notify.system.add", {"USER_ID": 2, "MESSAGE": "x"}).json()["result"] is False
        assert call(p, "im.message.add", {"DIALOG_ID": "2", "MESSAGE": "x"}).json()["result"] is False
        assert p.state.notifications == [] and p.state.messages == []
        assert p.stats.faults == {"not_created": 2}


def test_comments_to_dos_and_tasks_are_the_deals_last_timeline_activity(
        fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    deal = _open_deal(fresh, 0)
    deal_id, modified = int(deal["ID"]), deal["DATE_MODIFY"]
    fresh.advance(3600)
    call(fresh, "crm.timeline.comment.add", {"fields": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal", "COMMENT": "hi"}})
    row = fresh.state.deals.rows[deal_id]
    assert row["LAST_ACTIVITY_TIME"] == fresh.state.now_wire() and row["LAST_ACTIVITY_BY"] == "1"
    assert row["DATE_MODIFY"] == modified  # the deal's own fields did not change


def test_todos_added_through_the_api_are_listed_with_the_documented_shape_and_filters(
        fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    added = [call(fresh, "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": deal_id, "deadline": "2026-06-01T10:00:00",
                                                   "title": f"Позвонить {n}", "description": f"[crmbridge:{n:016x}]",
                                                   "responsibleId": 3}).json()
             for n, deal_id in enumerate((5, 5, 6), start=1)]
    assert [set(answer["result"]) for answer in added] == [{"id"}] * 3  # {"result": {"id": N}}
    first_id = added[0]["result"]["id"]
    listed = call(fresh, "crm.activity.list", {"filter": {"OWNER_TYPE_ID": 2, "OWNER_ID": 5, "PROVIDER_ID": "CRM_TODO"},
                                               "order": {"ID": "DESC"}}).json()
    assert listed["total"] == 2 and [row["ID"] for row in listed["result"]] == [str(first_id + 1), str(first_id)]
    row = listed["result"][1]
    assert (row["OWNER_TYPE_ID"], row["OWNER_ID"], row["TYPE_ID"], row["PROVIDER_ID"], row["PROVIDER_TYPE_ID"]) == (
        "2", "5", "6", "CRM_TODO", "TODO")
    assert (row["SUBJECT"], row["COMPLETED"], row["RESPONSIBLE_ID"]) == ("Позвонить 1", "N", "3")
    assert row["DESCRIPTION"] == f"[crmbridge:{1:016x}]" and row["DEADLINE"] == "2026-06-01T10:00:00+03:00"
    assert row["CREATED"] and row["LAST_UPDATED"] == row["CREATED"]
    # select narrows the row (ID always comes back); >ID and >=LAST_UPDATED filter; start=-1 skips the COUNT
    narrow = call(fresh, "crm.activity.list", {"filter": {">ID": first_id}, "select": ["SUBJECT"], "start": -1}).json()
    assert narrow["result"] == [{"ID": str(first_id + 1), "SUBJECT": "Позвонить 2"},
                                {"ID": str(first_id + 2), "SUBJECT": "Позвонить 3"}]
    assert narrow["total"] == 0 and "next" not in narrow
    fresh.state.complete_activity(first_id + 2)
    done = fresh.state.activities[first_id + 2]
    assert done["COMPLETED"] == "Y"
    recent = call(fresh, "crm.activity.list", {"filter": {">=LAST_UPDATED": done["LAST_UPDATED"], "COMPLETED": "Y"}}).json()
    assert [row["ID"] for row in recent["result"]] == [str(first_id + 2)]
    seeded_calls = sum(1 for a in fresh.state.activities.values() if a["PROVIDER_ID"] == "VOXIMPLANT_CALL")
    calls = call(fresh, "crm.activity.list", {"filter": {"PROVIDER_ID": "VOXIMPLANT_CALL"}}).json()
    assert calls["total"] == seeded_calls > 0 and {row["TYPE_ID"] for row in calls["result"]} == {"2"}
    assert call(fresh, "crm.activity.list", {"filter": "x"}).json()["error_description"] == "Parameter 'filter' must be array."


def test_todo_add_errors(fresh: SandboxPortal, call: Callable[..., requests.Response]) -> None:
    missing = call(fresh, "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 5})
    assert missing.status_code == 400 and missing.json()["error"] == "100"
    bad_date = call(fresh, "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 5, "deadline": "someday"})
    assert bad_date.json()["error"] == "WRONG_DATETIME_FORMAT"
    seeded = fresh.state.count("activities")  # calls, meetings and e-mails of the seed
    no_deal = call(fresh, "crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 999_999, "deadline": "2026-06-01T10:00:00"})
    assert no_deal.json()["error"] == "NOT_FOUND" and fresh.state.count("activities") == seeded
