"""In-memory portal of the sandbox: tables of rows exactly as the API returns them, and the write rules (history, dates)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Callable

from .catalog import (
    DEAL_FIELDS,
    PLAN_FIELD_METRIC,
    PLAN_FIELD_PERIOD,
    PLAN_FIELD_TARGET,
    STAGE_BY_ID,
    STAGES,
    UF_BY_NAME,
    deal_field_types,
)
from .query import Table
from .wire import PORTAL_TZ, fmt_day_dt, fmt_dt, norm_date, norm_dt, num_str, truthy

#: called with an event name (ONCRMDEALUPDATE, ONTASKADD, ...) and the id of the record it names
EventHook = Callable[[str, int], None]

CONTACT_TYPES: dict[str, str] = {
    "ID": "int", "NAME": "str", "SECOND_NAME": "str", "LAST_NAME": "str", "POST": "str", "TYPE_ID": "str",
    "SOURCE_ID": "str", "COMPANY_ID": "int", "ASSIGNED_BY_ID": "int", "CREATED_BY_ID": "int", "MODIFY_BY_ID": "int",
    "DATE_CREATE": "datetime", "DATE_MODIFY": "datetime", "OPENED": "flag", "EXPORT": "flag", "HAS_PHONE": "flag",
    "HAS_EMAIL": "flag", "HAS_IMOL": "flag", "COMMENTS": "str", "LAST_ACTIVITY_TIME": "datetime",
    "PHONE": "multi", "EMAIL": "multi",
}
COMPANY_TYPES: dict[str, str] = {
    "ID": "int", "TITLE": "str", "COMPANY_TYPE": "str", "INDUSTRY": "str", "EMPLOYEES": "str", "REVENUE": "float",
    "CURRENCY_ID": "str", "ASSIGNED_BY_ID": "int", "CREATED_BY_ID": "int", "MODIFY_BY_ID": "int",
    "DATE_CREATE": "datetime", "DATE_MODIFY": "datetime", "OPENED": "flag", "HAS_PHONE": "flag", "HAS_EMAIL": "flag",
    "HAS_IMOL": "flag", "COMMENTS": "str", "LAST_ACTIVITY_TIME": "datetime", "PHONE": "multi", "EMAIL": "multi",
}
HISTORY_TYPES: dict[str, str] = {
    "ID": "int", "TYPE_ID": "int", "OWNER_ID": "int", "CREATED_TIME": "datetime", "CATEGORY_ID": "int",
    "STAGE_SEMANTIC_ID": "str", "STAGE_ID": "str",
}
#: tasks.task.* answer in camelCase but are filtered, ordered and selected by UPPER_CASE names
TASK_KEYS: dict[str, str] = {
    "ID": "id", "PARENT_ID": "parentId", "TITLE": "title", "DESCRIPTION": "description", "STATUS": "status",
    "REAL_STATUS": "status", "PRIORITY": "priority", "RESPONSIBLE_ID": "responsibleId", "CREATED_BY": "createdBy",
    "CREATED_DATE": "createdDate", "CHANGED_BY": "changedBy", "CHANGED_DATE": "changedDate",
    "STATUS_CHANGED_DATE": "statusChangedDate", "CLOSED_BY": "closedBy", "CLOSED_DATE": "closedDate",
    "DEADLINE": "deadline", "GROUP_ID": "groupId", "UF_CRM_TASK": "ufCrmTask",
}
TASK_TYPES: dict[str, str] = {
    "id": "int", "parentId": "int", "title": "str", "description": "str", "status": "int", "priority": "int",
    "responsibleId": "int", "createdBy": "int", "createdDate": "datetime", "changedBy": "int",
    "changedDate": "datetime", "statusChangedDate": "datetime", "closedBy": "int", "closedDate": "datetime",
    "deadline": "datetime", "groupId": "int", "ufCrmTask": "list",
}
#: crm.activity.* rows: UPPER_CASE string values (D crm/timeline/activities/activity-base/crm-activity-list.md)
ACTIVITY_TYPES: dict[str, str] = {
    "ID": "int", "OWNER_ID": "int", "OWNER_TYPE_ID": "int", "TYPE_ID": "int", "PROVIDER_ID": "str",
    "PROVIDER_TYPE_ID": "str", "PROVIDER_GROUP_ID": "str", "ASSOCIATED_ENTITY_ID": "int", "SUBJECT": "str",
    "CREATED": "datetime", "LAST_UPDATED": "datetime", "START_TIME": "datetime", "END_TIME": "datetime",
    "DEADLINE": "datetime", "COMPLETED": "flag", "STATUS": "int", "RESPONSIBLE_ID": "int", "PRIORITY": "int",
    "NOTIFY_TYPE": "int", "NOTIFY_VALUE": "int", "DESCRIPTION": "str", "DESCRIPTION_TYPE": "int", "DIRECTION": "int",
    "LOCATION": "str", "SETTINGS": "str", "ORIGINATOR_ID": "str", "ORIGIN_ID": "str", "AUTHOR_ID": "int",
    "EDITOR_ID": "int", "PROVIDER_PARAMS": "str", "PROVIDER_DATA": "str", "RESULT_MARK": "int", "RESULT_VALUE": "float",
    "RESULT_SUM": "float", "RESULT_CURRENCY_ID": "str", "RESULT_STATUS": "int", "RESULT_STREAM": "int",
    "RESULT_SOURCE_ID": "str", "AUTOCOMPLETE_RULE": "int",
}
#: crm.item.* rows of the plans smart process: camelCase keys, typed values (D crm/universal/crm-item-list.md)
PLAN_ITEM_TYPES: dict[str, str] = {
    "id": "int", "title": "str", "createdBy": "int", "updatedBy": "int", "createdTime": "datetime",
    "updatedTime": "datetime", "categoryId": "int", "stageId": "str", "assignedById": "int", "opportunity": "float",
    PLAN_FIELD_PERIOD: "str", PLAN_FIELD_METRIC: "int", PLAN_FIELD_TARGET: "float",
}
COMMENT_TYPES: dict[str, str] = {
    "ID": "int", "CREATED": "datetime", "ENTITY_ID": "int", "ENTITY_TYPE": "str", "AUTHOR_ID": "int", "COMMENT": "str",
}


class PortalState:
    """Everything the portal holds. Rows carry wire values (strings for ids, `Y`/`N`, `+03:00` datetimes).

    Access it under `lock` when the server is running: request threads read and write it.
    `planted` maps a deal id to the regulation violations the seeder planted in it (ground truth for tests).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.deals = Table("deal", types=deal_field_types())
        self.contacts = Table("contact", types=dict(CONTACT_TYPES))
        self.companies = Table("company", types=dict(COMPANY_TYPES))
        self.history = Table("stagehistory", types=dict(HISTORY_TYPES))
        self.tasks = Table("task", id_key="id", types=dict(TASK_TYPES), key_map=dict(TASK_KEYS), default_desc=True)
        self.comments = Table("timelinecomment", types=dict(COMMENT_TYPES), default_desc=True)
        self.activities = Table("activity", types=dict(ACTIVITY_TYPES))
        #: items of the smart process that holds plans (crm.item.list entityTypeId PLANS_ENTITY_TYPE_ID)
        self.plan_items = Table("plan_item", id_key="id", types=dict(PLAN_ITEM_TYPES))
        self.notifications: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []  # chat messages (im.message.add), oldest first
        self._chats: dict[tuple[int, ...], int] = {}  # private dialog (pair of users) -> chat id
        self._next_message = 1
        self.planted: dict[int, list[str]] = {}
        self.on_event: EventHook | None = None
        self._task_index: dict[str, list[int]] | None = None  # binding (D_12) -> task ids; None = rebuild
        self._task_index_size = 0
        self._next_notification = 1
        # portal-clock times that let tests reason about sync overlap windows (count_modified_within)
        self._last_deal_list: float | None = None
        self._list_before_last_write: float | None = None

    # --- time -----------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def now_wire(self) -> str:
        return fmt_dt(self.clock()) or ""

    # --- deals ----------------------------------------------------------------------------------

    def normalise_deal_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Client values -> wire values; unknown and read-only fields are dropped, as the portal ignores them."""
        out: dict[str, Any] = {}
        for key, value in fields.items():
            key = str(key).upper() if not str(key).startswith("UF_") else str(key)
            if key in DEAL_FIELDS:
                api_type, _, read_only, _ = DEAL_FIELDS[key]
                if read_only:
                    continue
                out[key] = _to_wire(api_type, value)
            elif key in UF_BY_NAME:
                out[key] = _uf_to_wire(UF_BY_NAME[key].type, value)
            elif key == "CONTACT_IDS" and isinstance(value, list):
                out["CONTACT_ID"] = str(value[0]) if value else None
        return out

    def add_deal(self, fields: dict[str, Any], *, user_id: int = 1) -> int:
        """crm.deal.add: a new deal in its pipeline's first stage unless one is given; writes TYPE_ID 1 history."""
        with self.lock:
            wire = self.normalise_deal_fields(fields)
            category = int(wire.get("CATEGORY_ID") or 0)
            if category not in STAGES:
                category = 0
            stage_id = wire.get("STAGE_ID")
            if stage_id not in STAGE_BY_ID or STAGE_BY_ID[stage_id].category != category:
                stage_id = STAGES[category][0].status_id
            stage = STAGE_BY_ID[stage_id]
            now = self.now()
            now_s = fmt_dt(now)
            deal_id = self.deals.next_id()
            row: dict[str, Any] = blank_deal()
            row.update(wire)
            row.update({
                "ID": str(deal_id),
                "CATEGORY_ID": str(category),
                "STAGE_ID": stage_id,
                "STAGE_SEMANTIC_ID": stage.semantics,
                "CLOSED": "N" if stage.semantics == "P" else "Y",
                "IS_NEW": "Y",
                "CREATED_BY_ID": str(user_id),
                "MODIFY_BY_ID": str(user_id),
                "MOVED_BY_ID": str(user_id),
                "DATE_CREATE": now_s,
                "DATE_MODIFY": now_s,
                "MOVED_TIME": now_s,
                "LAST_ACTIVITY_TIME": now_s,
                "LAST_ACTIVITY_BY": str(user_id),
            })
            row.setdefault("TITLE", "")
            if not row.get("ASSIGNED_BY_ID"):
                row["ASSIGNED_BY_ID"] = str(user_id)
            if not row.get("PROBABILITY"):
                row["PROBABILITY"] = str(stage.probability)
            if not row.get("BEGINDATE"):
                row["BEGINDATE"] = fmt_day_dt(now)
            if not row.get("CLOSEDATE"):
                row["CLOSEDATE"] = fmt_day_dt(now + 7 * 86400)
            self.deals.insert(deal_id, row)
            self.add_history(1, deal_id, now, category, stage)
        self._fire("ONCRMDEALADD", deal_id)
        return deal_id

    def update_deal(self, deal_id: int, fields: dict[str, Any], *, user_id: int = 1,
                    allow_category_change: bool = True) -> None:
        """Apply an update: moves DATE_MODIFY, writes stage history (2 / 3 final / 5 pipeline), recomputes CLOSED.

        `allow_category_change=False` is crm.deal.update's rule (CATEGORY_ID is immutable there);
        the Python API allows it to simulate a user dragging the deal to another pipeline.
        Raises KeyError when the deal does not exist.
        """
        with self.lock:
            row = self.deals.rows.get(int(deal_id))
            if row is None:
                raise KeyError(deal_id)
            wire = self.normalise_deal_fields(fields)
            new_category = row["CATEGORY_ID"]
            if "CATEGORY_ID" in wire:
                requested = str(wire.pop("CATEGORY_ID"))
                if allow_category_change and requested.isdigit() and int(requested) in STAGES:
                    new_category = requested
            new_stage_id = wire.pop("STAGE_ID", None) or row["STAGE_ID"]
            if new_stage_id not in STAGE_BY_ID:
                new_stage_id = row["STAGE_ID"]  # an unknown stage is ignored like any bad value
            if new_category != row["CATEGORY_ID"]:
                if STAGE_BY_ID[new_stage_id].category != int(new_category):
                    new_stage_id = STAGES[int(new_category)][0].status_id
            elif STAGE_BY_ID[new_stage_id].category != int(row["CATEGORY_ID"]):
                if allow_category_change:
                    new_category = str(STAGE_BY_ID[new_stage_id].category)
                else:
                    new_stage_id = row["STAGE_ID"]
            now = self.now()
            now_s = fmt_dt(now)
            row.update(wire)
            stage = STAGE_BY_ID[new_stage_id]
            if new_category != row["CATEGORY_ID"]:
                row["CATEGORY_ID"] = new_category
                self._move(row, stage, now, now_s, user_id, type_id=5)
            elif new_stage_id != row["STAGE_ID"]:
                self._move(row, stage, now, now_s, user_id, type_id=2 if stage.semantics == "P" else 3)
            row["IS_NEW"] = "N"
            row["DATE_MODIFY"] = now_s
            row["MODIFY_BY_ID"] = str(user_id)
        self._fire("ONCRMDEALUPDATE", int(deal_id))

    def _move(self, row: dict[str, Any], stage: Any, now: float, now_s: str | None, user_id: int, type_id: int) -> None:
        was_closed = row["CLOSED"] == "Y"
        row["STAGE_ID"] = stage.status_id
        row["STAGE_SEMANTIC_ID"] = stage.semantics
        row["CLOSED"] = "N" if stage.semantics == "P" else "Y"
        row["MOVED_TIME"] = now_s
        row["MOVED_BY_ID"] = str(user_id)
        if row["CLOSED"] == "Y" and not was_closed:
            row["CLOSEDATE"] = fmt_day_dt(now)  # closing stamps the close date, as the portal does
        self.add_history(type_id, int(row["ID"]), now, int(row["CATEGORY_ID"]), stage)

    def delete_deal(self, deal_id: int) -> None:
        with self.lock:
            if int(deal_id) not in self.deals.rows:
                raise KeyError(deal_id)
            self.deals.delete(int(deal_id))
        self._fire("ONCRMDEALDELETE", int(deal_id))

    def add_history(self, type_id: int, owner_id: int, ts: float, category: int, stage: Any) -> int:
        hid = self.history.next_id()
        self.history.insert(hid, {
            "ID": hid, "TYPE_ID": type_id, "OWNER_ID": owner_id, "CREATED_TIME": fmt_dt(ts),
            "CATEGORY_ID": category, "STAGE_SEMANTIC_ID": stage.semantics, "STAGE_ID": stage.status_id,
        })
        return hid

    def _fire(self, event: str, entity_id: int) -> None:
        if event.startswith("ONCRMDEAL"):
            self._list_before_last_write = self._last_deal_list
        hook = self.on_event
        if hook is not None:
            hook(event, entity_id)

    # --- tasks ----------------------------------------------------------------------------------

    def add_task(self, fields: dict[str, Any], *, user_id: int = 1) -> int:
        with self.lock:
            now_s = self.now_wire()
            task_id = self.tasks.next_id()
            row = blank_task()
            row.update({
                "id": str(task_id), "createdBy": str(user_id), "createdDate": now_s, "changedBy": str(user_id),
                "changedDate": now_s, "statusChangedDate": now_s,
            })
            row.update(task_fields_to_wire(fields))
            self.tasks.insert(task_id, row)
            for binding in row.get("ufCrmTask") or ():
                if str(binding).startswith("D_") and str(binding)[2:].isdigit():
                    self._timeline_activity(int(str(binding)[2:]), user_id)
            self._task_index = None
        self._fire("ONTASKADD", task_id)
        return task_id

    def update_task(self, task_id: int, fields: dict[str, Any], *, user_id: int = 1) -> None:
        with self.lock:
            row = self.tasks.rows.get(int(task_id))
            if row is None:
                raise KeyError(task_id)
            wire = task_fields_to_wire(fields)
            now_s = self.now_wire()
            if "status" in wire and wire["status"] != row["status"]:
                row["statusChangedDate"] = now_s
                if wire["status"] == "5":
                    row["closedDate"], row["closedBy"] = now_s, str(user_id)
                else:
                    row["closedDate"], row["closedBy"] = None, None
            row.update(wire)
            row["changedDate"], row["changedBy"] = now_s, str(user_id)
            self._task_index = None  # its bindings may have changed
        self._fire("ONTASKUPDATE", int(task_id))

    def delete_task(self, task_id: int) -> None:
        with self.lock:
            if int(task_id) not in self.tasks.rows:
                raise KeyError(task_id)
            self.tasks.delete(int(task_id))
            self._task_index = None
        self._fire("ONTASKDELETE", int(task_id))

    # --- activities, comments, notifications ----------------------------------------------------

    def add_todo(self, owner_type: int, owner_id: int, deadline: str, *, title: str = "", description: str = "",
                 responsible_id: int, author_id: int) -> int:
        """crm.activity.todo.add: a universal activity (PROVIDER_ID CRM_TODO) as crm.activity.list returns it.

        `deadline` is a wire datetime. A to-do's START_TIME / END_TIME / DEADLINE all carry its deadline.
        """
        with self.lock:
            now_s = self.now_wire()
            aid = self.activities.next_id()
            self.activities.insert(aid, {
                "ID": str(aid), "OWNER_ID": str(owner_id), "OWNER_TYPE_ID": str(owner_type), "TYPE_ID": "6",
                "PROVIDER_ID": "CRM_TODO", "PROVIDER_TYPE_ID": "TODO", "PROVIDER_GROUP_ID": None,
                "ASSOCIATED_ENTITY_ID": "0", "SUBJECT": title, "CREATED": now_s, "LAST_UPDATED": now_s,
                "START_TIME": deadline, "END_TIME": deadline, "DEADLINE": deadline, "COMPLETED": "N", "STATUS": "1",
                "RESPONSIBLE_ID": str(responsible_id), "PRIORITY": "2", "NOTIFY_TYPE": "0", "NOTIFY_VALUE": "0",
                "DESCRIPTION": description, "DESCRIPTION_TYPE": "1", "DIRECTION": "0", "LOCATION": "",
                "SETTINGS": [], "ORIGINATOR_ID": None, "ORIGIN_ID": None, "AUTHOR_ID": str(author_id),
                "EDITOR_ID": str(author_id), "PROVIDER_PARAMS": [], "PROVIDER_DATA": None, "RESULT_MARK": "0",
                "RESULT_VALUE": None, "RESULT_SUM": None, "RESULT_CURRENCY_ID": None, "RESULT_STATUS": "0",
                "RESULT_STREAM": "0", "RESULT_SOURCE_ID": None, "AUTOCOMPLETE_RULE": "0",
            })
            if owner_type == 2:
                self._timeline_activity(owner_id, author_id)
        self._fire("ONCRMACTIVITYADD", aid)
        return aid

    def complete_activity(self, activity_id: int, completed: bool = True, *, user_id: int = 1) -> None:
        """A manager marks a to-do done (or reopens it): COMPLETED and STATUS change, LAST_UPDATED moves.

        Raises KeyError when the activity does not exist.
        """
        with self.lock:
            row = self.activities.rows.get(int(activity_id))
            if row is None:
                raise KeyError(activity_id)
            row["COMPLETED"], row["STATUS"] = ("Y", "2") if completed else ("N", "1")
            row["LAST_UPDATED"], row["EDITOR_ID"] = self.now_wire(), str(user_id)
        self._fire("ONCRMACTIVITYUPDATE", int(activity_id))

    # --- clients --------------------------------------------------------------------------------

    def update_client(self, kind: str, client_id: int, fields: dict[str, Any]) -> None:
        """A manager edits a contact or company (a phone added): DATE_MODIFY moves, ONCRM<KIND>UPDATE fires.

        `fields` are wire values (PHONE / EMAIL as lists of multifield dicts). Raises KeyError when absent.
        """
        table = {"contact": self.contacts, "company": self.companies}[kind]
        with self.lock:
            row = table.rows.get(int(client_id))
            if row is None:
                raise KeyError(client_id)
            row.update(fields)
            row["DATE_MODIFY"] = self.now_wire()
        self._fire(f"ONCRM{kind.upper()}UPDATE", int(client_id))

    def add_comment(self, entity_type: str, entity_id: int, comment: str, author_id: int) -> int:
        with self.lock:
            cid = self.comments.next_id()
            self.comments.insert(cid, {
                "ID": str(cid), "CREATED": self.now_wire(), "ENTITY_ID": str(entity_id),
                "ENTITY_TYPE": entity_type.lower(), "AUTHOR_ID": str(author_id), "COMMENT": comment, "FILES": [],
            })
            if entity_type.lower() == "deal":
                self._timeline_activity(entity_id, author_id)
            return cid

    def _timeline_activity(self, deal_id: int, user_id: int) -> None:
        """A new item in a deal's timeline (comment, to-do, task) is its last activity: LAST_ACTIVITY_TIME / _BY
        ("date and author of the last activity in the timeline", D crm/deals/crm-deal-get.md). DATE_MODIFY stays:
        the deal's own fields did not change."""
        row = self.deals.rows.get(int(deal_id))
        if row is not None:
            row["LAST_ACTIVITY_TIME"], row["LAST_ACTIVITY_BY"] = self.now_wire(), str(user_id)

    def add_notification(self, user_id: int, message: str, extra: dict[str, Any]) -> int:
        """im.notify.system.add as a webhook calls it. The docs: TAG is unique within an application and, through a
        webhook, must come with CLIENT_ID (the application's id); then a notification with an existing TAG of that
        application removes the earlier ones. Without CLIENT_ID no application is known: TAG replaces nothing."""
        with self.lock:
            nid = self._next_notification
            self._next_notification += 1
            tag, client = extra.get("TAG"), extra.get("CLIENT_ID")
            if tag and client:
                self.notifications[:] = [n for n in self.notifications
                                         if not (n.get("TAG") == tag and n.get("CLIENT_ID") == client)]
            self.notifications.append(dict(extra, ID=nid, USER_ID=user_id, MESSAGE=message, DATE=self.now_wire()))
            return nid

    def add_message(self, author_id: int, dialog_user: int, text: str, params: dict[str, Any]) -> int:
        """im.message.add to the private dialog of `author_id` and `dialog_user` (one chat per pair of users)."""
        with self.lock:
            pair = tuple(sorted((author_id, dialog_user)))
            chat_id = self._chats.setdefault(pair, 100 + len(self._chats))
            mid = self._next_message
            self._next_message += 1
            self.messages.append({"id": mid, "chat_id": chat_id, "author_id": author_id, "date": self.now_wire(),
                                  "text": text, "unread": True, "uuid": None, "replaces": [], "params": params,
                                  "disappearing_date": None, "_pair": pair})
            return mid

    def dialog_messages(self, user_id: int, dialog_user: int) -> tuple[int, list[dict[str, Any]]]:
        """(chat id, messages of the private dialog, newest first) as the participant `user_id` sees them."""
        with self.lock:
            pair = tuple(sorted((user_id, dialog_user)))
            chat_id = self._chats.get(pair, 0)
            rows = [dict(m) for m in reversed(self.messages) if m["_pair"] == pair]
        for row in rows:
            del row["_pair"]
        return chat_id, rows

    def tasks_bound_to(self, binding: str) -> list[int]:
        """Ids of the tasks bound to a CRM binding such as D_12 (an index rebuilt after task writes)."""
        index = self._task_index
        if index is None or self._task_index_size != len(self.tasks.rows):
            index = {}
            for task_id, row in self.tasks.rows.items():
                for bound in row.get("ufCrmTask") or []:
                    index.setdefault(bound, []).append(task_id)
            self._task_index, self._task_index_size = index, len(self.tasks.rows)
        return index.get(binding, [])

    def tasks_visible_to(self, user_id: int) -> list[int]:
        """Ids of the tasks a non-admin user sees: those they are responsible for or created."""
        me = str(user_id)
        return [task_id for task_id, row in self.tasks.rows.items()
                if str(row.get("responsibleId")) == me or str(row.get("createdBy")) == me]

    def deal_tasks(self, deal_id: int) -> list[dict[str, Any]]:
        """Tasks bound to a deal (UF_CRM_TASK contains D_<id>)."""
        binding = f"D_{deal_id}"
        with self.lock:
            return [t for t in self.tasks.rows.values() if binding in (t.get("ufCrmTask") or [])]

    def deal_todos(self, deal_id: int) -> list[dict[str, Any]]:
        """CRM to-dos of a deal (OWNER_TYPE_ID 2, PROVIDER_ID CRM_TODO)."""
        with self.lock:
            return [a for a in self.activities.values()
                    if a["OWNER_TYPE_ID"] == "2" and a["OWNER_ID"] == str(deal_id) and a["PROVIDER_ID"] == "CRM_TODO"]

    def deal_history(self, deal_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [h for h in self.history.rows.values() if h["OWNER_ID"] == deal_id]

    # --- views for tests and benchmarks ---------------------------------------------------------

    def cache_rows(self, synced_at: str) -> dict[str, list[dict[str, Any]]]:
        """The portal's deals, history, tasks and clients as a sync would cache them (table -> rows)."""
        from crmbridge.cache import rows  # the sync's own conversions: what tests load is what sync writes

        with self.lock:
            return {
                "deals": [rows.deal_row(raw, synced_at) for raw in self.deals.rows.values()],
                "stage_history": [rows.stage_history_row(raw) for raw in self.history.rows.values()],
                "tasks": [rows.task_row(raw) for raw in self.tasks.rows.values()],
                "contacts": [rows.contact_row(raw) for raw in self.contacts.rows.values()],
                "companies": [rows.company_row(raw) for raw in self.companies.rows.values()],
            }

    def kpi_cache_rows(self, synced_at: str) -> dict[str, list[dict[str, Any]]]:
        """What a sync caches for the KPIs besides cache_rows: calls / meetings / e-mails and CRM to-dos, the plans
        smart process's items, currencies, users and departments (table -> rows)."""
        from crmbridge.cache import rows
        from crmbridge.sandbox import catalog

        with self.lock:
            activities = list(self.activities.rows.values())
            return {
                "communications": [{**rows.communication_row(raw), "synced_at": synced_at} for raw in activities
                                   if raw.get("PROVIDER_ID") != "CRM_TODO"],
                "activities": [{**rows.activity_row(raw), "synced_at": synced_at} for raw in activities
                               if raw.get("PROVIDER_ID") == "CRM_TODO"],
                "plan_items": [rows.plan_item_row(raw, catalog.PLANS_ENTITY_TYPE_ID, synced_at)
                               for raw in self.plan_items.rows.values()],
                "currencies": [rows.currency_row({"CURRENCY": code, "AMOUNT_CNT": count, "AMOUNT": amount,
                                                  "BASE": "Y" if code == catalog.BASE_CURRENCY else "N", "SORT": sort})
                               for code, (count, amount, _, sort) in catalog.CURRENCIES.items()],
                "users": [rows.user_row({"ID": str(u.id), "NAME": u.name, "LAST_NAME": u.last_name, "ACTIVE": u.active,
                                         "UF_DEPARTMENT": [u.department]}) for u in catalog.USERS],
                "departments": [rows.department_row({"ID": str(d), "NAME": name, "PARENT": parent, "UF_HEAD": head})
                                for d, (name, parent, head) in catalog.DEPARTMENTS.items()],
            }

    def deal_records(self) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]],
                                             dict[str, Any] | None, dict[str, Any] | None]]:
        """Per deal: (deal, its stage history, its tasks, contact, company), the arguments of DealMapper.deal.

        One pass over history and tasks instead of a scan per deal: benchmarks map 100,000 deals.
        """
        history: dict[int, list[dict[str, Any]]] = defaultdict(list)
        tasks: dict[int, list[dict[str, Any]]] = defaultdict(list)
        with self.lock:
            for row in self.history.rows.values():
                history[int(row["OWNER_ID"])].append(row)
            for row in self.tasks.rows.values():
                for binding in row.get("ufCrmTask") or ():
                    if binding.startswith("D_"):
                        tasks[int(binding[2:])].append(row)
            deals = list(self.deals.rows.items())
        for deal_id, raw in deals:
            yield (raw, history[deal_id], tasks[deal_id],
                   self.contacts.rows.get(int(raw.get("CONTACT_ID") or 0)),
                   self.companies.rows.get(int(raw.get("COMPANY_ID") or 0)))

    def api_deals(self) -> list[dict[str, Any]]:
        """Every deal as crm.deal.get returns it (all fields incl. UF_CRM_*), copies in id order."""
        with self.lock:
            return [dict(self.deals.rows[i]) for i in self.deals.ids]

    _COUNTABLE = {"deals": "deals", "contacts": "contacts", "companies": "companies", "stage_history": "history",
                  "history": "history", "stagehistory": "history", "tasks": "tasks", "comments": "comments",
                  "timeline_comments": "comments", "activities": "activities"}

    def count(self, what: str) -> int:
        """Rows of a table by name: deals, contacts, companies, stage_history, tasks, comments, activities."""
        with self.lock:
            return len(getattr(self, self._COUNTABLE[what]))

    def deal_task_ids(self) -> set[int]:
        """Ids of the tasks bound to a deal (UF_CRM_TASK holds a D_<id>)."""
        with self.lock:
            return {int(t["id"]) for t in self.tasks.rows.values()
                    if any(str(b).startswith("D_") for b in (t.get("ufCrmTask") or ()))}

    def note_deal_list(self) -> None:
        """Called on each crm.deal.list: remembers when the deals were last read."""
        self._last_deal_list = self.clock()

    def count_modified_within(self, minutes: float, *, before_last_sync: bool = True) -> int:
        """Deals a `>=DATE_MODIFY` cursor with an overlap of `minutes` would read again.

        The cursor is the newest DATE_MODIFY a reader could have seen: as of the last crm.deal.list
        before the latest deal write (`before_last_sync`), or as of now. Deals changed after that
        moment are included too, so the result bounds what an incremental sync re-reads.
        """
        with self.lock:
            reference = self.clock()
            if before_last_sync and self._list_before_last_write is not None:
                reference = self._list_before_last_write
            ref_wire = fmt_dt(reference) or ""
            seen = [d["DATE_MODIFY"] for d in self.deals.rows.values() if d["DATE_MODIFY"] and d["DATE_MODIFY"] <= ref_wire]
            if not seen:
                return len(self.deals)
            cursor = datetime.fromisoformat(max(seen)).timestamp()
            floor = fmt_dt(cursor - minutes * 60) or ""
            return sum(1 for d in self.deals.rows.values() if d["DATE_MODIFY"] and d["DATE_MODIFY"] >= floor)


_DEAL_BLANK: dict[str, Any] = {
    "TITLE": "", "TYPE_ID": "SALE", "CATEGORY_ID": "0", "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P", "IS_NEW": "N",
    "IS_RECURRING": "N", "IS_RETURN_CUSTOMER": "N", "IS_REPEATED_APPROACH": "N", "PROBABILITY": None,
    "CURRENCY_ID": "RUB", "OPPORTUNITY": "0.00", "IS_MANUAL_OPPORTUNITY": "N", "TAX_VALUE": "0.00",
    "COMPANY_ID": "0", "CONTACT_ID": None, "QUOTE_ID": None, "BEGINDATE": "", "CLOSEDATE": "", "OPENED": "Y",
    "CLOSED": "N", "COMMENTS": None, "ASSIGNED_BY_ID": None, "CREATED_BY_ID": None, "MODIFY_BY_ID": None,
    "MOVED_BY_ID": None, "DATE_CREATE": None, "DATE_MODIFY": None, "MOVED_TIME": None, "SOURCE_ID": None,
    "SOURCE_DESCRIPTION": None, "LEAD_ID": None, "ADDITIONAL_INFO": None, "LOCATION_ID": None,
    "ORIGINATOR_ID": None, "ORIGIN_ID": None, "UTM_SOURCE": None, "UTM_MEDIUM": None, "UTM_CAMPAIGN": None,
    "UTM_CONTENT": None, "UTM_TERM": None, "LAST_ACTIVITY_TIME": None, "LAST_ACTIVITY_BY": None,
}
_UF_BLANK: dict[str, Any] = {name: "" for name in UF_BY_NAME}


def blank_deal() -> dict[str, Any]:
    """A deal row with every standard field and user field present (unset user fields read as "")."""
    row = {"ID": None}
    row.update(_DEAL_BLANK)
    row.update(_UF_BLANK)
    return row


def blank_task() -> dict[str, Any]:
    return {
        "id": None, "parentId": "0", "title": "", "description": "", "status": "2", "priority": "1",
        "responsibleId": None, "createdBy": None, "createdDate": None, "changedBy": None, "changedDate": None,
        "statusChangedDate": None, "closedBy": None, "closedDate": None, "deadline": None, "groupId": "0",
        "ufCrmTask": [],
    }


def task_fields_to_wire(fields: dict[str, Any]) -> dict[str, Any]:
    """tasks.task.add/update `fields` (UPPER_CASE) -> camelCase wire row values."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        camel = TASK_KEYS.get(str(key).upper())
        if camel is None or camel in ("id", "createdDate", "changedDate", "closedDate", "statusChangedDate"):
            continue
        ftype = TASK_TYPES[camel]
        if ftype == "list":
            items = list(value.values()) if isinstance(value, dict) else value
            out[camel] = [str(v) for v in items] if isinstance(items, list) else ([str(items)] if items else [])
        elif ftype == "datetime":
            out[camel] = norm_dt(value)
        elif ftype == "int":
            out[camel] = str(int(float(value))) if value not in (None, "") else None
        else:
            out[camel] = "" if value is None else str(value)
    return out


def _to_wire(api_type: str, value: Any) -> Any:
    if value is None:
        return None
    if api_type in ("integer", "user", "crm_company", "crm_contact", "crm_category", "crm_lead", "crm_quote"):
        try:
            return str(int(float(value)))
        except (TypeError, ValueError):
            return None
    if api_type == "double":
        try:
            return num_str(float(value))
        except (TypeError, ValueError):
            return "0.00"
    if api_type == "char":
        return "Y" if truthy(value) else "N"
    if api_type == "date":
        parsed = norm_dt(value)
        return (parsed[:10] + "T00:00:00+03:00") if parsed else ""
    if api_type == "datetime":
        return norm_dt(value)
    return str(value)


def _uf_to_wire(uf_type: str, value: Any) -> Any:
    if value is None or value == "" or value is False:
        return ""
    if isinstance(value, list):
        value = value[0] if value else ""
    if uf_type == "date":
        return norm_date(value) or ""
    if uf_type == "datetime":
        return norm_dt(value) or ""
    if uf_type == "double":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return ""
        return str(int(number)) if number.is_integer() else str(number)
    if uf_type == "enumeration":
        try:
            return str(int(float(value)))
        except (TypeError, ValueError):
            return ""
    return str(value)


def portal_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, PORTAL_TZ)
