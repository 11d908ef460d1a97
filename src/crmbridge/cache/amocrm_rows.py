"""Pure conversions from amoCRM v4 records (unix seconds, custom_fields_values) to the cache's typed rows.

Leads land in `deals` with the same columns as Bitrix24 deals (id = lead id, category_id = pipeline id,
stage_id = status id, assigned_by_id = responsible user, amount = price), dates as ISO 8601 in the account's
time zone, so every documented query works on either CRM. `raw` keeps the record exactly as amoCRM sent it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone, tzinfo
from typing import Any

from crmbridge.cache.rows import as_float, as_int, as_text, dumps

RawRecord = dict[str, Any]
Row = dict[str, Any]

#: amoCRM's system statuses, in every pipeline (LeadModel::WON_STATUS_ID / LOST_STATUS_ID)
WON_STATUS = 142
LOST_STATUS = 143
#: event types the sync reads from /api/v4/events: the stage history and the lead's life
HISTORY_EVENT = "lead_status_changed"
LIFE_EVENTS = ("lead_deleted", "lead_restored")
#: stage_history.type_id as Bitrix24 numbers them: 1 created, 2 moved, 3 moved to a final stage, 5 pipeline changed
MOVED, CLOSED, PIPELINE_CHANGED = 2, 3, 5


def iso(stamp: Any, zone: tzinfo = timezone.utc) -> str | None:
    """Unix seconds -> ISO 8601 with the account zone's offset (None stays None)."""
    seconds = as_int(stamp)
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, zone).isoformat()


def semantics(status_id: Any) -> str:
    status = as_int(status_id)
    return "S" if status == WON_STATUS else "F" if status == LOST_STATUS else "P"


def _embedded(record: RawRecord, key: str) -> list[RawRecord]:
    embedded = record.get("_embedded")
    items = embedded.get(key) if isinstance(embedded, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]


def main_contact_id(lead: RawRecord) -> int | None:
    """The lead's main contact (`is_main`), else its first one (`with=contacts`)."""
    contacts = _embedded(lead, "contacts")
    main = next((item for item in contacts if item.get("is_main")), contacts[0] if contacts else None)
    return as_int(main.get("id")) if main else None


def company_id(record: RawRecord) -> int | None:
    companies = _embedded(record, "companies")
    return as_int(companies[0].get("id")) if companies else None


def deal_row(lead: RawRecord, synced_at: str, zone: tzinfo = timezone.utc, currency: str | None = None) -> Row:
    status = as_int(lead.get("status_id"))
    closed = status in (WON_STATUS, LOST_STATUS)
    return {
        "id": as_int(lead.get("id")),
        "title": as_text(lead.get("name")),
        "category_id": as_int(lead.get("pipeline_id")) or 0,
        "stage_id": as_text(lead.get("status_id")),
        "stage_semantic": semantics(status),
        "amount": as_float(lead.get("price")),
        "currency": currency,
        "assigned_by_id": as_int(lead.get("responsible_user_id")),
        "contact_id": main_contact_id(lead),
        "company_id": company_id(lead),
        "date_create": iso(lead.get("created_at"), zone),
        "date_modify": iso(lead.get("updated_at"), zone),
        "closed": int(closed),
        "close_date": iso(lead.get("closed_at"), zone),
        "probability": None,  # amoCRM has no probability on a lead; a binding may name a custom field for R4
        "deleted": 0,
        "synced_at": synced_at,
        "raw": dumps(lead),
    }


def pipeline_row(pipeline: RawRecord) -> Row:
    return {
        "id": as_int(pipeline.get("id")) or 0,
        "name": as_text(pipeline.get("name")),
        "sort": as_int(pipeline.get("sort")),
        "is_default": int(bool(pipeline.get("is_main"))),
        "raw": dumps({key: value for key, value in pipeline.items() if key != "_embedded"}),
    }


def stage_rows(pipeline: RawRecord) -> list[Row]:
    pipeline_id = as_int(pipeline.get("id")) or 0
    return [{
        "status_id": as_text(status.get("id")),
        "category_id": pipeline_id,
        "entity_id": None,
        "name": as_text(status.get("name")),
        "sort": as_int(status.get("sort")),
        "semantics": semantics(status.get("id")),
        "raw": dumps(status),
    } for status in _embedded(pipeline, "statuses")]


def deal_field_row(field: RawRecord) -> Row:
    """A lead custom field; enum options in the same JSON shape as Bitrix24's ([{"ID", "VALUE"}])."""
    enums = field.get("enums") or []
    options = [{"ID": str(item.get("id")), "VALUE": item.get("value")} for item in enums if isinstance(item, dict)]
    return {
        "field_name": as_text(field.get("id")),
        "user_type_id": as_text(field.get("type")),
        "label": as_text(field.get("name")),
        "multiple": int(field.get("type") in ("multiselect", "multitext", "category")),
        "mandatory": int(bool(field.get("required_statuses"))),
        "options": dumps(options) if options else None,
        "raw": dumps(field),
    }


def user_row(user: RawRecord) -> Row:
    rights = user.get("rights") if isinstance(user.get("rights"), dict) else {}
    group = as_int(rights.get("group_id"))
    return {
        "id": as_int(user.get("id")),
        "name": as_text(user.get("name")),
        "last_name": None,  # amoCRM keeps one name
        "email": as_text(user.get("email")),
        "active": int(bool(rights.get("is_active", True))),
        "departments": dumps([group] if group is not None else []),
        "raw": dumps(user),
    }


def group_row(group: RawRecord) -> Row:
    """A user group of the account (GET /api/v4/account?with=users_groups) as a department: amoCRM's groups are
    flat (no parent, no head); users name theirs in rights.group_id (0: the main group)."""
    return {"id": as_int(group.get("id")), "name": as_text(group.get("name")), "parent_id": None, "head_id": None,
            "sort": None, "raw": dumps(group)}


def multitext(record: RawRecord, code: str) -> list[str]:
    """Values of a contact's / company's PHONE or EMAIL field (by its system code)."""
    found: list[str] = []
    for field in record.get("custom_fields_values") or []:
        if isinstance(field, dict) and field.get("field_code") == code:
            found += [str(v.get("value")).strip() for v in field.get("values") or []
                      if isinstance(v, dict) and str(v.get("value") or "").strip()]
    return found


def contact_row(contact: RawRecord) -> Row:
    return {
        "id": as_int(contact.get("id")),
        "name": as_text(contact.get("first_name") or contact.get("name")),
        "last_name": as_text(contact.get("last_name")),
        "company_id": company_id(contact),
        "has_phone": int(bool(multitext(contact, "PHONE"))),
        "has_email": int(bool(multitext(contact, "EMAIL"))),
        "raw": dumps(contact),
    }


def company_row(company: RawRecord) -> Row:
    return {
        "id": as_int(company.get("id")),
        "title": as_text(company.get("name")),
        "has_phone": int(bool(multitext(company, "PHONE"))),
        "has_email": int(bool(multitext(company, "EMAIL"))),
        "raw": dumps(company),
    }


def event_row_id(event_id: str) -> int:
    """A stable integer key for an event id (a string, reference §6): 56 bits of its SHA-1."""
    return int.from_bytes(hashlib.sha1(event_id.encode("utf-8")).digest()[:7], "big")


def _lead_status(values: Any) -> tuple[int | None, int | None]:
    for item in values or []:
        status = item.get("lead_status") if isinstance(item, dict) else None
        if isinstance(status, dict):
            return as_int(status.get("pipeline_id")), as_int(status.get("id"))
    return None, None


def stage_history_row(event: RawRecord, zone: tzinfo = timezone.utc) -> Row:
    """A `lead_status_changed` event: where the lead went (value_after) and where it came from (value_before)."""
    to_pipeline, to_status = _lead_status(event.get("value_after"))
    from_pipeline, from_status = _lead_status(event.get("value_before"))
    if from_pipeline is not None and to_pipeline is not None and from_pipeline != to_pipeline:
        type_id = PIPELINE_CHANGED
    elif to_status in (WON_STATUS, LOST_STATUS):
        type_id = CLOSED
    else:
        type_id = MOVED
    return {
        "id": event_row_id(str(event.get("id"))),
        "crm_id": as_text(event.get("id")),
        "deal_id": as_int(event.get("entity_id")),
        "type_id": type_id,
        "category_id": to_pipeline,
        "stage_id": as_text(to_status),
        "stage_semantic": semantics(to_status),
        "from_category_id": from_pipeline,
        "from_stage_id": as_text(from_status),
        "created_time": iso(event.get("created_at"), zone),
        "raw": dumps(event),
    }


def task_title(text: Any) -> str:
    """amoCRM tasks have one text: its first line is the title the regulation's stage task is matched by."""
    return str(text or "").strip().split("\n", 1)[0].strip()


def task_row(task: RawRecord, zone: tzinfo = timezone.utc) -> Row:
    completed = bool(task.get("is_completed"))
    on_lead = task.get("entity_type") == "leads"
    return {
        "id": as_int(task.get("id")),
        "deal_id": as_int(task.get("entity_id")) if on_lead else None,
        "title": task_title(task.get("text")),
        "status": 5 if completed else 2,  # Bitrix24's numbers: 5 completed, 2 pending
        "responsible_id": as_int(task.get("responsible_user_id")),
        "deadline": iso(task.get("complete_till"), zone),
        "created_date": iso(task.get("created_at"), zone),
        "changed_date": iso(task.get("updated_at"), zone),
        # amoCRM records no completion time: a completed task counts as closed when it was last changed
        "closed_date": iso(task.get("updated_at"), zone) if completed else None,
        "raw": dumps(task),
    }
