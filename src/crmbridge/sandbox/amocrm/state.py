"""The sandbox amoCRM account in memory: the seeded Bitrix24 portal told in amoCRM's terms, its queries and writes.

Records are kept as the v4 API returns them (unix-second timestamps, `custom_fields_values`, string event
ids); `_links` and `_embedded` are added when a record is rendered. Writes follow the account's rules:
a status change writes a `lead_status_changed` event, a new responsible an `entity_responsible_changed`
one, every change moves `updated_at`, and a hook callback lets the server deliver webhooks.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from crmbridge.sandbox import catalog as b24
from crmbridge.sandbox.amocrm import catalog as c
from crmbridge.sandbox.state import PortalState

ZONE = ZoneInfo(c.TIMEZONE)
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

HookCallback = Callable[[str, str, dict[str, Any]], None]  # (entity, action, record)


class ApiError(Exception):
    """An amoCRM error answer: HTTP status and a problem+json body."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail,
                     **extra}


def ulid(ms: int, rng: random.Random) -> str:
    """An event id as amoCRM gives them (e.g. 01drbfj5a8k9zd60bgg907a6w9): 48 bits of time, 80 random, base32."""
    value = (ms << 80) | rng.getrandbits(80)
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _ts(wire: Any) -> int | None:
    """A Bitrix24 wire datetime (`2026-01-15T10:00:00+03:00`) or date -> unix seconds."""
    if not wire:
        return None
    text = str(wire)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZONE)
    return int(moment.timestamp())


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value)) if value not in (None, "", False) else None
    except ValueError:
        return None


def _enum_label(field: c.CustomField, enum_id: int) -> str | None:
    return next((label for eid, label in field.enums if eid == enum_id), None)


def seeded_state(*, deals: int, seed: int, now: float) -> AccountState:
    """An account seeded from the Bitrix24 sandbox seed (same deals, history, tasks, clients, breaches) at `now`."""
    from crmbridge.sandbox.seed import seed_portal

    portal = PortalState(clock=lambda: now)
    seed_portal(portal, deals=deals, seed=seed, now=now)
    state = AccountState(clock=lambda: now, seed=seed)
    state.load_from_portal(portal)
    return state


class AccountState:
    """Everything the account holds; access it under `lock` while the server runs."""

    def __init__(self, clock: Callable[[], float] = time.time, *, seed: int = 1) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.leads: dict[int, dict[str, Any]] = {}
        self.lead_contacts: dict[int, list[int]] = {}
        self.lead_companies: dict[int, list[int]] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.companies: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # ascending by (created_at, id): ULIDs sort by time
        self.deleted_leads: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.planted: dict[int, list[str]] = {}
        self.on_hook: HookCallback | None = None
        self.version = 0  # moves on every write: the server caches filtered lists per version
        self._rng = random.Random(seed * 104729 + 3)
        self._next_id: dict[str, int] = defaultdict(lambda: 1)

    # --- ids and time -------------------------------------------------------------------------

    def now(self) -> int:
        return int(self.clock())

    def next_id(self, kind: str) -> int:
        with self.lock:
            value = self._next_id[kind]
            self._next_id[kind] = value + 1
            return value

    def _bump(self, kind: str, used: int) -> None:
        self._next_id[kind] = max(self._next_id[kind], used + 1)

    # --- seeding: the Bitrix24 sandbox portal in amoCRM's terms ---------------------------------

    def load_from_portal(self, portal: PortalState) -> None:
        """Translate a seeded Bitrix24 portal: the same deals, history, tasks, clients, people and breaches."""
        for user in b24.USERS:
            amo_id = c.USER_IDS[user.id]
            self.users[amo_id] = {
                "id": amo_id, "name": " ".join(part for part in (user.name, user.last_name) if part),
                "email": user.email, "lang": "ru",
                "rights": {"leads": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
                           "is_admin": user.id == 1, "is_free": False, "is_active": user.active,
                           "group_id": c.GROUP_IDS[user.department], "role_id": None, "status_rights": []},
            }
        for cid, row in portal.companies.rows.items():
            self.companies[cid] = self._client_from(row, cid, company=True)
            self._bump("company", cid)
        for pid, row in portal.contacts.rows.items():
            self.contacts[pid] = self._client_from(row, pid, company=False)
            self._bump("contact", pid)
        history: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in portal.history.rows.values():
            history[int(row["OWNER_ID"])].append(row)
        events: list[dict[str, Any]] = []
        for deal_id in portal.deals.ids:
            raw = portal.deals.rows[deal_id]
            self.leads[deal_id] = self._lead_from(raw)
            contact = _as_int(raw.get("CONTACT_ID"))
            company = _as_int(raw.get("COMPANY_ID"))
            self.lead_contacts[deal_id] = [contact] if contact else []
            self.lead_companies[deal_id] = [company] if company else []
            rows = sorted(history[deal_id], key=lambda h: (h["CREATED_TIME"], int(h["ID"])))
            for before, after in zip(rows, rows[1:]):
                events.append(self._status_event(deal_id, _ts(after["CREATED_TIME"]) or 0,
                                                 (int(before["CATEGORY_ID"]), before["STAGE_ID"]),
                                                 (int(after["CATEGORY_ID"]), after["STAGE_ID"]),
                                                 self.leads[deal_id]["responsible_user_id"]))
            self._bump("lead", deal_id)
        events.sort(key=lambda e: (e["created_at"], e["id"]))
        self.events = events
        for task_id, row in portal.tasks.rows.items():
            task = self._task_from(row)
            if task is not None:
                self.tasks[task_id] = task
            self._bump("task", task_id)
        self.planted = {deal_id: list(kinds) for deal_id, kinds in portal.planted.items()}

    @staticmethod
    def _status_of(category: int, stage_id: str) -> tuple[int, int]:
        return c.PIPELINE_IDS[category], c.STATUS_IDS[stage_id]

    def _status_event(self, lead_id: int, at: int, before: tuple[int, str], after: tuple[int, str],
                      user: int) -> dict[str, Any]:
        (p0, s0), (p1, s1) = self._status_of(*before), self._status_of(*after)
        return self._event("lead_status_changed", lead_id, at, user,
                           [{"lead_status": {"id": s0, "pipeline_id": p0}}],
                           [{"lead_status": {"id": s1, "pipeline_id": p1}}])

    def _event(self, kind: str, lead_id: int, at: int, user: int, before: list[Any], after: list[Any],
               entity_type: str = "lead") -> dict[str, Any]:
        return {"id": ulid(at * 1000 + self._rng.randrange(1000), self._rng), "type": kind, "entity_id": lead_id,
                "entity_type": entity_type, "created_by": user, "created_at": at, "value_after": after,
                "value_before": before, "account_id": c.ACCOUNT_ID}

    def _lead_from(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        category = int(raw["CATEGORY_ID"])
        pipeline, status = self._status_of(category, raw["STAGE_ID"])
        responsible = c.USER_IDS.get(_as_int(raw.get("ASSIGNED_BY_ID")) or 1, c.USER_IDS[1])
        values: list[dict[str, Any]] = []
        for name, field_id in c.FIELD_IDS.items():
            value = self._field_value(c.LEAD_FIELD_BY_ID[field_id], raw.get(name))
            if value is not None:
                values.append(value)
        probability = self._field_value(c.LEAD_FIELD_BY_ID[c.PROBABILITY_FIELD], raw.get("PROBABILITY"))
        if probability is not None:
            values.append(probability)
        closed = raw.get("CLOSED") == "Y"
        return {
            "id": int(raw["ID"]), "name": raw.get("TITLE") or "",
            "price": int(round(float(raw.get("OPPORTUNITY") or 0))),
            "responsible_user_id": responsible, "group_id": self.users[responsible]["rights"]["group_id"],
            "status_id": status, "pipeline_id": pipeline, "loss_reason_id": None,
            "created_by": c.USER_IDS.get(_as_int(raw.get("CREATED_BY_ID")) or 1, responsible),
            "updated_by": c.USER_IDS.get(_as_int(raw.get("MODIFY_BY_ID")) or 1, responsible),
            "created_at": _ts(raw.get("DATE_CREATE")), "updated_at": _ts(raw.get("DATE_MODIFY")),
            "closed_at": _ts(raw.get("CLOSEDATE")) if closed else None, "closest_task_at": None,
            "is_deleted": False, "custom_fields_values": values or None, "score": None,
            "account_id": c.ACCOUNT_ID, "labor_cost": None,
        }

    @staticmethod
    def _field_value(field: c.CustomField, wire: Any) -> dict[str, Any] | None:
        """One Bitrix24 user field value -> amoCRM `custom_fields_values` item (None when empty)."""
        if wire in (None, "", False):
            return None
        if field.type == "select":
            enum_id = c.ENUM_IDS.get(int(wire))
            label = _enum_label(field, enum_id) if enum_id else None
            if label is None:
                return None
            value: dict[str, Any] = {"value": label, "enum_id": enum_id, "enum_code": None}
        elif field.type in ("date", "date_time"):
            stamp = _ts(wire if field.type == "date_time" or "T" in str(wire) else f"{wire}T00:00:00")
            if stamp is None:
                return None
            value = {"value": stamp}
        else:
            value = {"value": str(wire)}
        return {"field_id": field.id, "field_name": field.name, "field_code": field.code, "field_type": field.type,
                "values": [value]}

    def _client_from(self, row: Mapping[str, Any], entity_id: int, *, company: bool) -> dict[str, Any]:
        phone, email = (c.COMPANY_PHONE, c.COMPANY_EMAIL) if company else (c.CONTACT_PHONE, c.CONTACT_EMAIL)
        values = []
        for field_id, key, code in ((phone, "PHONE", "PHONE"), (email, "EMAIL", "EMAIL")):
            items = [item for item in row.get(key) or [] if isinstance(item, Mapping) and item.get("VALUE")]
            if items:
                enums = dict(c.PHONE_ENUMS if code == "PHONE" else c.EMAIL_ENUMS)
                values.append({"field_id": field_id, "field_name": "Телефон" if code == "PHONE" else "Email",
                               "field_code": code, "field_type": "multitext",
                               "values": [{"value": item["VALUE"], "enum_id": enums["WORK"], "enum_code": "WORK"}
                                          for item in items]})
        responsible = c.USER_IDS.get(_as_int(row.get("ASSIGNED_BY_ID")) or 1, c.USER_IDS[1])
        record: dict[str, Any] = {
            "id": entity_id, "responsible_user_id": responsible, "group_id": 0,
            "created_by": c.USER_IDS[1], "updated_by": c.USER_IDS[1],
            "created_at": _ts(row.get("DATE_CREATE")), "updated_at": _ts(row.get("DATE_MODIFY")),
            "closest_task_at": None, "is_deleted": False, "custom_fields_values": values or None,
            "account_id": c.ACCOUNT_ID,
        }
        if company:
            record["name"] = row.get("TITLE") or ""
        else:
            first, last = row.get("NAME") or "", row.get("LAST_NAME") or ""
            record.update({"name": " ".join(part for part in (first, last) if part), "first_name": first,
                           "last_name": last, "is_unsorted": False, "company_id": _as_int(row.get("COMPANY_ID"))})
        return record

    @staticmethod
    def _task_from(row: Mapping[str, Any]) -> dict[str, Any] | None:
        bound = [int(b[2:]) for b in row.get("ufCrmTask") or [] if str(b).startswith("D_")]
        completed = str(row.get("status")) == "5"
        text = str(row.get("title") or "")
        if row.get("description"):
            text += "\n" + str(row["description"])
        responsible = c.USER_IDS.get(_as_int(row.get("responsibleId")) or 1, c.USER_IDS[1])
        return {
            "id": int(row["id"]), "created_by": c.USER_IDS.get(_as_int(row.get("createdBy")) or 1, responsible),
            "updated_by": c.USER_IDS.get(_as_int(row.get("changedBy")) or 1, responsible),
            "created_at": _ts(row.get("createdDate")), "updated_at": _ts(row.get("changedDate")),
            "responsible_user_id": responsible, "group_id": 0,
            "entity_id": bound[0] if bound else None, "entity_type": "leads" if bound else None,
            "duration": 0, "is_completed": completed, "task_type_id": 1, "text": text,
            "result": {"text": "Выполнено"} if completed else [], "complete_till": _ts(row.get("deadline")),
            "account_id": c.ACCOUNT_ID,
        }

    # --- user-side changes (tests, demo): as a manager would in the interface --------------------

    def update_lead(self, lead_id: int, changes: Mapping[str, Any], *, user: int | None = None) -> dict[str, Any]:
        """Apply already-validated changes to a lead: events, updated_at, hooks. Returns the lead."""
        with self.lock:
            lead = self.leads[int(lead_id)]
            who = user or c.USER_IDS[1]
            now = self.now()
            hook_actions = ["update"]
            old_status, old_pipeline, old_responsible = lead["status_id"], lead["pipeline_id"], lead["responsible_user_id"]
            for key in ("name", "price", "responsible_user_id", "status_id", "pipeline_id", "loss_reason_id"):
                if key in changes and changes[key] is not None:
                    lead[key] = changes[key]
            if "custom_fields_values" in changes:
                lead["custom_fields_values"] = _merge_values(lead.get("custom_fields_values"),
                                                             changes["custom_fields_values"])
            if (lead["status_id"], lead["pipeline_id"]) != (old_status, old_pipeline):
                self._append_event(self._event(
                    "lead_status_changed", lead["id"], now, who,
                    [{"lead_status": {"id": old_status, "pipeline_id": old_pipeline}}],
                    [{"lead_status": {"id": lead["status_id"], "pipeline_id": lead["pipeline_id"]}}]))
                closed = lead["status_id"] in (c.WON_STATUS, c.LOST_STATUS)
                lead["closed_at"] = now if closed else None
                hook_actions.insert(0, "status")
            if lead["responsible_user_id"] != old_responsible:
                self._append_event(self._event(
                    "entity_responsible_changed", lead["id"], now, who,
                    [{"responsible_user": {"id": old_responsible}}],
                    [{"responsible_user": {"id": lead["responsible_user_id"]}}]))
                lead["group_id"] = self.users.get(lead["responsible_user_id"], {}).get("rights", {}).get("group_id", 0)
                hook_actions.append("responsible")
            lead["updated_at"], lead["updated_by"] = now, who
            self.version += 1
            extra = {"old_status_id": old_status, "old_pipeline_id": old_pipeline,
                     "old_responsible_user_id": old_responsible}
        for action in hook_actions:
            self._hook("leads", action, dict(lead, **extra))
        return lead

    def add_lead(self, name: str, pipeline_id: int, *, responsible: int, status_id: int | None = None,
                 price: int = 0) -> int:
        """A new lead as a manager (or a web form) would create it: in the pipeline's first regular status."""
        with self.lock:
            status = status_id or next(s.id for s in c.STATUSES[pipeline_id] if s.type == 0)
            lead_id = self.next_id("lead")
            now = self.now()
            self.leads[lead_id] = {
                "id": lead_id, "name": name, "price": price, "responsible_user_id": responsible,
                "group_id": self.users[responsible]["rights"]["group_id"], "status_id": status, "pipeline_id": pipeline_id,
                "loss_reason_id": None, "created_by": responsible, "updated_by": responsible, "created_at": now,
                "updated_at": now, "closed_at": None, "closest_task_at": None, "is_deleted": False,
                "custom_fields_values": None, "score": None, "account_id": c.ACCOUNT_ID, "labor_cost": None,
            }
            self.lead_contacts[lead_id], self.lead_companies[lead_id] = [], []
            self.version += 1
            lead = dict(self.leads[lead_id])
        self._hook("leads", "add", lead)
        return lead_id

    def delete_lead(self, lead_id: int, *, user: int | None = None) -> None:
        with self.lock:
            lead = self.leads.pop(int(lead_id))
            self.deleted_leads[lead["id"]] = lead
            self._append_event(self._event("lead_deleted", lead["id"], self.now(), user or c.USER_IDS[1], [], []))
            self.version += 1
        self._hook("leads", "delete", lead)

    def update_contact(self, contact_id: int, *, phones: Iterable[str] | None = None,
                       emails: Iterable[str] | None = None) -> None:
        """A manager edits a contact's phones / e-mails (nothing about its leads changes)."""
        with self.lock:
            contact = self.contacts[int(contact_id)]
            values = [v for v in contact.get("custom_fields_values") or []
                      if not ((phones is not None and v["field_code"] == "PHONE")
                              or (emails is not None and v["field_code"] == "EMAIL"))]
            for items, field_id, code in ((phones, c.CONTACT_PHONE, "PHONE"), (emails, c.CONTACT_EMAIL, "EMAIL")):
                if items:
                    values.append({"field_id": field_id, "field_name": code.title(), "field_code": code,
                                   "field_type": "multitext",
                                   "values": [{"value": v, "enum_id": None, "enum_code": "WORK"} for v in items]})
            contact["custom_fields_values"] = values or None
            contact["updated_at"] = self.now()
            self.version += 1
        self._hook("contacts", "update", contact)

    def complete_task(self, task_id: int, *, result: str = "Выполнено") -> None:
        with self.lock:
            task = self.tasks[int(task_id)]
            task["is_completed"], task["result"], task["updated_at"] = True, {"text": result}, self.now()
            self.version += 1

    def _append_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if len(self.events) > 1 and (self.events[-2]["created_at"], self.events[-2]["id"]) > (
                event["created_at"], event["id"]):
            self.events.sort(key=lambda e: (e["created_at"], e["id"]))

    def _hook(self, entity: str, action: str, record: dict[str, Any]) -> None:
        hook = self.on_hook
        if hook is not None:
            hook(entity, action, record)

    # --- API writes: validated as a whole, then applied (a 400 writes nothing) --------------------

    def patch_leads(self, items: list[Any], user: int) -> list[dict[str, Any]]:
        with self.lock:
            errors: list[dict[str, Any]] = []
            plans: list[tuple[int, dict[str, Any], str]] = []
            for index, item in enumerate(items):
                request_id = str(item.get("request_id", index)) if isinstance(item, Mapping) else str(index)
                problems, changes = self._validate_lead_patch(item)
                if problems:
                    errors.append({"request_id": request_id, "errors": problems})
                else:
                    plans.append((int(item["id"]), changes, request_id))
            if errors:
                raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": errors})
            answered = []
        for lead_id, changes, request_id in plans:
            lead = self.update_lead(lead_id, changes, user=user)
            answered.append({"id": lead_id, "updated_at": lead["updated_at"], "request_id": request_id})
        return answered

    def _validate_lead_patch(self, item: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
        if not isinstance(item, Mapping):
            return [{"code": "InvalidType", "path": "", "detail": "This value should be of type object."}], {}
        lead_id = _as_int(item.get("id"))
        if lead_id is None or lead_id not in self.leads:
            return [{"code": "NotFound", "path": "id", "detail": "Entity not found."}], {}
        lead = self.leads[lead_id]
        problems: list[dict[str, str]] = []
        changes: dict[str, Any] = {}
        for key in item:
            if key not in ("id", "name", "price", "status_id", "pipeline_id", "responsible_user_id",
                           "custom_fields_values", "request_id", "loss_reason_id", "updated_by"):
                problems.append({"code": "FieldNotExpected", "path": key, "detail": "This field was not expected."})
        if "name" in item:
            changes["name"] = str(item["name"])
        if "price" in item:
            if not isinstance(item["price"], int) or isinstance(item["price"], bool):
                problems.append({"code": "InvalidType", "path": "price", "detail": "This value should be of type int."})
            else:
                changes["price"] = item["price"]
        if "responsible_user_id" in item:
            user = _as_int(item["responsible_user_id"])
            if user not in self.users:
                problems.append({"code": "NotSupportedChoice", "path": "responsible_user_id",
                                 "detail": "The value you selected is not a valid choice."})
            else:
                changes["responsible_user_id"] = user
        if "status_id" in item or "pipeline_id" in item:
            status = _as_int(item.get("status_id", lead["status_id"]))
            pipeline = _as_int(item.get("pipeline_id", lead["pipeline_id"]))
            if (pipeline, status) not in c.STATUS_BY_ID:
                problems.append({"code": "NotSupportedChoice", "path": "status_id",
                                 "detail": "The value you selected is not a valid choice."})
            else:
                changes["status_id"], changes["pipeline_id"] = status, pipeline
        if "custom_fields_values" in item:
            checked, field_problems = _validate_values(item["custom_fields_values"])
            problems += field_problems
            changes["custom_fields_values"] = checked
        return problems, changes

    def add_tasks(self, items: list[Any], user: int) -> list[dict[str, Any]]:
        with self.lock:
            errors = []
            for index, item in enumerate(items):
                problems = _validate_task(item, self)
                if problems:
                    request_id = str(item.get("request_id", index)) if isinstance(item, Mapping) else str(index)
                    errors.append({"request_id": request_id, "errors": problems})
            if errors:
                raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": errors})
            answered = []
            now = self.now()
            for index, item in enumerate(items):
                task_id = self.next_id("task")
                entity_type = item.get("entity_type")
                self.tasks[task_id] = {
                    "id": task_id, "created_by": user, "updated_by": user, "created_at": now, "updated_at": now,
                    "responsible_user_id": _as_int(item.get("responsible_user_id")) or user, "group_id": 0,
                    "entity_id": _as_int(item.get("entity_id")) if entity_type else None,
                    "entity_type": entity_type, "duration": int(item.get("duration") or 0), "is_completed": False,
                    "task_type_id": _as_int(item.get("task_type_id")) or 1, "text": str(item["text"]),
                    "result": [], "complete_till": int(item["complete_till"]), "account_id": c.ACCOUNT_ID,
                }
                answered.append({"id": task_id, "request_id": str(item.get("request_id", index))})
            self.version += 1
            return answered

    def patch_tasks(self, items: list[Any]) -> list[dict[str, Any]]:
        with self.lock:
            for item in items:
                if not isinstance(item, Mapping) or _as_int(item.get("id")) not in self.tasks:
                    raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": [
                        {"request_id": "0", "errors": [{"code": "NotFound", "path": "id", "detail": "Entity not found."}]}]})
            answered = []
            for index, item in enumerate(items):
                task = self.tasks[int(item["id"])]
                for key in ("text", "complete_till", "responsible_user_id", "is_completed"):
                    if key in item:
                        task[key] = item[key]
                if "result" in item:
                    task["result"] = item["result"]
                task["updated_at"] = self.now()
                answered.append({"id": task["id"], "updated_at": task["updated_at"],
                                 "request_id": str(item.get("request_id", index))})
            self.version += 1
            return answered

    def add_notes(self, entity_type: str, items: list[Any], user: int) -> list[dict[str, Any]]:
        with self.lock:
            errors = []
            for index, item in enumerate(items):
                problems = []
                if not isinstance(item, Mapping):
                    problems.append({"code": "InvalidType", "path": "", "detail": "This value should be of type object."})
                else:
                    if _as_int(item.get("entity_id")) not in self.leads:
                        problems.append({"code": "NotFound", "path": "entity_id", "detail": "Entity not found."})
                    if item.get("note_type") not in ("common", "service_message"):
                        problems.append({"code": "NotSupportedChoice", "path": "note_type",
                                         "detail": "The value you selected is not a valid choice."})
                    if not isinstance(item.get("params"), Mapping) or not str(item["params"].get("text") or ""):
                        problems.append({"code": "NotBlank", "path": "params.text", "detail": "This value should not be blank."})
                if problems:
                    request_id = str(item.get("request_id", index)) if isinstance(item, Mapping) else str(index)
                    errors.append({"request_id": request_id, "errors": problems})
            if errors:
                raise ApiError(400, "Bad Request", "Request validation failed", **{"validation-errors": errors})
            answered = []
            now = self.now()
            for index, item in enumerate(items):
                note_id = self.next_id("note")
                self.notes[note_id] = {
                    "id": note_id, "entity_id": int(item["entity_id"]), "entity_type": entity_type,
                    "created_by": user, "updated_by": user, "created_at": now, "updated_at": now,
                    "responsible_user_id": user, "group_id": 0, "note_type": item["note_type"],
                    "params": dict(item["params"]), "account_id": c.ACCOUNT_ID, "is_needs_to_trigger_digital_pipeline": False,
                }
                answered.append({"id": note_id, "entity_id": int(item["entity_id"]),
                                 "request_id": str(item.get("request_id", index))})
            self.version += 1
            return answered

    # --- views for tests and benchmarks ---------------------------------------------------------

    def api_lead(self, lead: dict[str, Any], *, with_contacts: bool = True) -> dict[str, Any]:
        """A lead as GET /api/v4/leads?with=contacts returns it, without `_links`."""
        lead_id = lead["id"]
        embedded: dict[str, Any] = {"tags": [], "companies": [{"id": cid} for cid in self.lead_companies.get(lead_id, [])]}
        if with_contacts:
            embedded["contacts"] = [{"id": pid, "is_main": index == 0}
                                    for index, pid in enumerate(self.lead_contacts.get(lead_id, []))]
        return {**lead, "_embedded": embedded}

    def cache_rows(self, synced_at: str) -> dict[str, list[dict[str, Any]]]:
        """The account's leads, history, tasks and clients as a sync caches them (table -> rows)."""
        from crmbridge.cache import amocrm_rows as rows  # the sync's own conversions

        with self.lock:
            return {
                "deals": [rows.deal_row(self.api_lead(lead), synced_at, ZONE, c.CURRENCY) for lead in self.leads.values()],
                "stage_history": [rows.stage_history_row(event, ZONE) for event in self.events
                                  if event["type"] == rows.HISTORY_EVENT],
                "tasks": [rows.task_row(task, ZONE) for task in self.tasks.values() if task["entity_type"] == "leads"],
                "contacts": [rows.contact_row(self._client_view(contact)) for contact in self.contacts.values()],
                "companies": [rows.company_row(company) for company in self.companies.values()],
            }

    @staticmethod
    def _client_view(contact: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in contact.items() if k != "company_id"}
        out["_embedded"] = {"tags": [], "companies": [{"id": contact["company_id"]}] if contact.get("company_id") else []}
        return out

    def lead_tasks(self, lead_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [t for t in self.tasks.values() if t["entity_type"] == "leads" and t["entity_id"] == int(lead_id)]

    def lead_notes(self, lead_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [n for n in self.notes.values() if n["entity_id"] == int(lead_id)]

    def lead_events(self, lead_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["entity_id"] == int(lead_id) and e["entity_type"] == "lead"]


def _merge_values(current: list[dict[str, Any]] | None, changes: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """PATCH semantics: each given field replaces that field's values; `values: null` / [] clears it."""
    by_id = {item["field_id"]: item for item in current or []}
    for change in changes:
        field = c.LEAD_FIELD_BY_ID[change["field_id"]]
        if change["values"]:
            by_id[field.id] = {"field_id": field.id, "field_name": field.name, "field_code": field.code,
                               "field_type": field.type, "values": change["values"]}
        else:
            by_id.pop(field.id, None)
    return list(by_id.values()) or None


def _validate_values(values: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """`custom_fields_values` of a lead PATCH, checked as amoCRM does (reference §4 and §10.5)."""
    problems: list[dict[str, str]] = []
    checked: list[dict[str, Any]] = []
    if not isinstance(values, list):
        return [], [{"code": "InvalidType", "path": "custom_fields_values", "detail": "This value should be of type array."}]
    for index, item in enumerate(values):
        path = f"custom_fields_values.{index}"
        field = c.LEAD_FIELD_BY_ID.get(_as_int(item.get("field_id")) or 0) if isinstance(item, Mapping) else None
        if field is None:
            problems.append({"code": "NotSupportedChoice", "path": f"{path}.field_id",
                             "detail": "The value you selected is not a valid choice."})
            continue
        raw_values = item.get("values")
        if raw_values is None:
            checked.append({"field_id": field.id, "values": []})
            continue
        if not isinstance(raw_values, list):
            problems.append({"code": "InvalidType", "path": f"{path}.values", "detail": "This value should be of type array."})
            continue
        normalised = []
        for number, value in enumerate(raw_values):
            where = f"{path}.values.{number}"
            if not isinstance(value, Mapping):
                problems.append({"code": "InvalidType", "path": where, "detail": "This value should be of type object."})
                continue
            if field.type == "select":
                if "enum_code" in value:
                    problems.append({"code": "FieldNotExpected", "path": f"{where}.enum_code",
                                     "detail": "This field was not expected."})
                    continue
                enum_id = _as_int(value.get("enum_id"))
                label = _enum_label(field, enum_id) if enum_id is not None else None
                if label is None and "value" in value:
                    enum_id = next((eid for eid, text in field.enums if text == value["value"]), None)
                    label = value["value"] if enum_id is not None else None
                if label is None:
                    problems.append({"code": "NotSupportedChoice", "path": f"{where}.enum_id",
                                     "detail": "The value you selected is not a valid choice."})
                    continue
                normalised.append({"value": label, "enum_id": enum_id, "enum_code": None})
            elif field.type in ("date", "date_time"):
                stamp = _date_value(value.get("value"))
                if stamp is None:
                    problems.append({"code": "InvalidType", "path": f"{where}.value", "detail": "This value is not a valid date."})
                    continue
                normalised.append({"value": stamp})
            elif field.type == "numeric":
                try:
                    float(str(value.get("value")))
                except ValueError:
                    problems.append({"code": "InvalidType", "path": f"{where}.value", "detail": "This value should be numeric."})
                    continue
                normalised.append({"value": str(value.get("value"))})
            else:
                normalised.append({"value": str(value.get("value") or "")})
        checked.append({"field_id": field.id, "values": normalised})
    return checked, problems


def _date_value(value: Any) -> int | None:
    """A date field value as clients send it: a unix timestamp or an RFC 3339 / ISO string (the PHP library)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZONE)
    return int(moment.timestamp())


def _validate_task(item: Any, state: AccountState) -> list[dict[str, str]]:
    """A task needs text, a deadline and (given or defaulted) a responsible user (reference §5)."""
    if not isinstance(item, Mapping):
        return [{"code": "InvalidType", "path": "", "detail": "This value should be of type object."}]
    problems = []
    if not str(item.get("text") or "").strip():
        problems.append({"code": "NotBlank", "path": "text", "detail": "This value should not be blank."})
    if not isinstance(item.get("complete_till"), int) or isinstance(item.get("complete_till"), bool):
        problems.append({"code": "InvalidType", "path": "complete_till", "detail": "This value should be of type int."})
    if "responsible_user_id" in item and _as_int(item.get("responsible_user_id")) not in state.users:
        problems.append({"code": "NotSupportedChoice", "path": "responsible_user_id",
                         "detail": "The value you selected is not a valid choice."})
    entity_type = item.get("entity_type")
    if entity_type is not None:
        if entity_type not in ("leads", "contacts", "companies", "customers"):
            problems.append({"code": "NotSupportedChoice", "path": "entity_type",
                             "detail": "The value you selected is not a valid choice."})
        elif entity_type == "leads" and _as_int(item.get("entity_id")) not in state.leads:
            problems.append({"code": "NotFound", "path": "entity_id", "detail": "Entity not found."})
    for key in item:
        if key not in ("text", "complete_till", "entity_id", "entity_type", "responsible_user_id", "task_type_id",
                       "duration", "request_id", "created_by", "result", "is_completed"):
            problems.append({"code": "FieldNotExpected", "path": key, "detail": "This field was not expected."})
    return problems
