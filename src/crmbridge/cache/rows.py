"""Pure conversions from Bitrix24 raw records (strings, Y/N flags) to the cache's typed table rows."""

from __future__ import annotations

import json
from typing import Any

RawRecord = dict[str, Any]
Row = dict[str, Any]


def as_int(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def as_float(value: Any) -> float | None:
    """'19999.99' -> 19999.99; '' and None stay None, so an empty amount is not mistaken for 0."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_flag(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    return 1 if str(value).upper() in ("Y", "1", "TRUE") else 0


def as_text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _has_multifield(record: RawRecord, key: str) -> int:
    values = record.get(key) or []
    return int(any(isinstance(v, dict) and str(v.get("VALUE") or "").strip() for v in values))


def deal_row(raw: RawRecord, synced_at: str) -> Row:
    return {
        "id": as_int(raw.get("ID")),
        "title": as_text(raw.get("TITLE")),
        "category_id": as_int(raw.get("CATEGORY_ID")) or 0,
        "stage_id": as_text(raw.get("STAGE_ID")),
        "stage_semantic": as_text(raw.get("STAGE_SEMANTIC_ID")),
        "amount": as_float(raw.get("OPPORTUNITY")),
        "currency": as_text(raw.get("CURRENCY_ID")),
        "assigned_by_id": as_int(raw.get("ASSIGNED_BY_ID")),
        "contact_id": as_int(raw.get("CONTACT_ID")),
        "company_id": as_int(raw.get("COMPANY_ID")),
        "date_create": as_text(raw.get("DATE_CREATE")),
        "date_modify": as_text(raw.get("DATE_MODIFY")),
        "closed": as_flag(raw.get("CLOSED")),
        "close_date": as_text(raw.get("CLOSEDATE")),
        "probability": as_float(raw.get("PROBABILITY")),
        "deleted": 0,
        "synced_at": synced_at,
        "raw": dumps(raw),
    }


def pipeline_row(raw: RawRecord) -> Row:
    # crm.category.list answers in camelCase (id, name, sort, isDefault)
    return {
        "id": as_int(raw.get("id", raw.get("ID"))) or 0,
        "name": as_text(raw.get("name", raw.get("NAME"))),
        "sort": as_int(raw.get("sort", raw.get("SORT"))),
        "is_default": as_flag(raw.get("isDefault", raw.get("IS_DEFAULT"))),
        "raw": dumps(raw),
    }


def stage_semantics(raw: RawRecord) -> str:
    """crm.status.list: SEMANTICS S / F for final stages, null with EXTRA.SEMANTICS 'process' otherwise."""
    semantics = raw.get("SEMANTICS")
    if semantics in ("S", "F"):
        return semantics
    extra = (raw.get("EXTRA") or {}).get("SEMANTICS") if isinstance(raw.get("EXTRA"), dict) else None
    return {"success": "S", "failure": "F"}.get(str(extra), "P")


def stage_row(raw: RawRecord, category_id: int) -> Row:
    return {
        "status_id": as_text(raw.get("STATUS_ID")),
        "category_id": category_id,
        "entity_id": as_text(raw.get("ENTITY_ID")),
        "name": as_text(raw.get("NAME")),
        "sort": as_int(raw.get("SORT")),
        "semantics": stage_semantics(raw),
        "raw": dumps(raw),
    }


def deal_field_row(raw: RawRecord) -> Row:
    label = raw.get("EDIT_FORM_LABEL") or raw.get("LIST_COLUMN_LABEL") or raw.get("FIELD_NAME")
    if isinstance(label, dict):  # without a LANG filter the portal answers one label per language
        label = label.get("ru") or label.get("en") or next(iter(label.values()), None)
    options = raw.get("LIST")
    return {
        "field_name": as_text(raw.get("FIELD_NAME")),
        "user_type_id": as_text(raw.get("USER_TYPE_ID")),
        "label": as_text(label),
        "multiple": as_flag(raw.get("MULTIPLE")),
        "mandatory": as_flag(raw.get("MANDATORY")),
        "options": dumps(options) if options else None,
        "raw": dumps(raw),
    }


def user_row(raw: RawRecord) -> Row:
    departments = raw.get("UF_DEPARTMENT") or []
    return {
        "id": as_int(raw.get("ID")),
        "name": as_text(raw.get("NAME")),
        "last_name": as_text(raw.get("LAST_NAME")),
        "email": as_text(raw.get("EMAIL")),
        "active": as_flag(raw.get("ACTIVE")),
        "departments": dumps([as_int(d) for d in departments]),
        "raw": dumps(raw),
    }


def contact_row(raw: RawRecord) -> Row:
    return {
        "id": as_int(raw.get("ID")),
        "name": as_text(raw.get("NAME")),
        "last_name": as_text(raw.get("LAST_NAME")),
        "company_id": as_int(raw.get("COMPANY_ID")),
        "has_phone": _has_multifield(raw, "PHONE"),
        "has_email": _has_multifield(raw, "EMAIL"),
        "raw": dumps(raw),
    }


def company_row(raw: RawRecord) -> Row:
    return {
        "id": as_int(raw.get("ID")),
        "title": as_text(raw.get("TITLE")),
        "has_phone": _has_multifield(raw, "PHONE"),
        "has_email": _has_multifield(raw, "EMAIL"),
        "raw": dumps(raw),
    }


def stage_history_row(raw: RawRecord) -> Row:
    return {
        "id": as_int(raw.get("ID")),
        "deal_id": as_int(raw.get("OWNER_ID")),
        "type_id": as_int(raw.get("TYPE_ID")),
        "category_id": as_int(raw.get("CATEGORY_ID")),
        "stage_id": as_text(raw.get("STAGE_ID")),
        "stage_semantic": as_text(raw.get("STAGE_SEMANTIC_ID")),
        "created_time": as_text(raw.get("CREATED_TIME")),
        "raw": dumps(raw),
    }


def bound_deal_ids(bindings: Any) -> list[int]:
    """UF_CRM_TASK ['D_12', 'C_7'] -> [12]: only the deal bindings."""
    ids = []
    for binding in bindings or []:
        text = str(binding)
        if text.startswith("D_"):
            deal_id = as_int(text[2:])
            if deal_id is not None:
                ids.append(deal_id)
    return ids


def task_row(raw: RawRecord) -> Row:
    # tasks.task.list answers in camelCase with string values
    deal_ids = bound_deal_ids(raw.get("ufCrmTask", raw.get("UF_CRM_TASK")))
    return {
        "id": as_int(raw.get("id", raw.get("ID"))),
        "deal_id": deal_ids[0] if deal_ids else None,
        "title": as_text(raw.get("title", raw.get("TITLE"))),
        "status": as_int(raw.get("status", raw.get("STATUS"))),
        "responsible_id": as_int(raw.get("responsibleId", raw.get("RESPONSIBLE_ID"))),
        "deadline": as_text(raw.get("deadline", raw.get("DEADLINE"))),
        "created_date": as_text(raw.get("createdDate", raw.get("CREATED_DATE"))),
        "changed_date": as_text(raw.get("changedDate", raw.get("CHANGED_DATE"))),
        "closed_date": as_text(raw.get("closedDate", raw.get("CLOSED_DATE"))),
        "raw": dumps(raw),
    }


#: crm.activity.list OWNER_TYPE_ID of a deal
DEAL_OWNER_TYPE = 2


def activity_row(raw: RawRecord) -> Row:
    """A crm.activity.list record (UPPER_CASE strings) -> activities row; deal_id only when a deal owns it."""
    owned_by_deal = as_int(raw.get("OWNER_TYPE_ID")) == DEAL_OWNER_TYPE
    return {
        "id": as_int(raw.get("ID")),
        "deal_id": as_int(raw.get("OWNER_ID")) if owned_by_deal else None,
        "provider_id": as_text(raw.get("PROVIDER_ID")),
        "subject": as_text(raw.get("SUBJECT")),
        "completed": as_flag(raw.get("COMPLETED")),
        "responsible_id": as_int(raw.get("RESPONSIBLE_ID")),
        "deadline": as_text(raw.get("DEADLINE")),
        "created": as_text(raw.get("CREATED")),
        "last_updated": as_text(raw.get("LAST_UPDATED")),
        "raw": dumps(raw),
    }


def department_row(raw: RawRecord) -> Row:
    """department.get: ID, NAME, SORT, PARENT (absent at the top), UF_HEAD."""
    return {
        "id": as_int(raw.get("ID")),
        "name": as_text(raw.get("NAME")),
        "parent_id": as_int(raw.get("PARENT")),
        "head_id": as_int(raw.get("UF_HEAD")) or None,
        "sort": as_int(raw.get("SORT")),
        "raw": dumps(raw),
    }


def currency_row(raw: RawRecord) -> Row:
    """crm.currency.list: AMOUNT_CNT units of CURRENCY cost AMOUNT units of the base currency (BASE = Y)."""
    return {
        "currency": as_text(raw.get("CURRENCY")),
        "amount_cnt": as_float(raw.get("AMOUNT_CNT")),
        "amount": as_float(raw.get("AMOUNT")),
        "base": as_flag(raw.get("BASE")),
        "sort": as_int(raw.get("SORT")),
        "date_update": as_text(raw.get("DATE_UPDATE")),
        "raw": dumps(raw),
    }


#: crm.activity.list TYPE_ID of what the activity KPIs count (D crm/auxiliary/enum/crm-enum-activity-type.md)
COMMUNICATION_KINDS = {1: "meeting", 2: "call", 4: "email"}


def communication_row(raw: RawRecord) -> Row:
    """A call, meeting or e-mail (crm.activity.list, UPPER_CASE strings), whoever owns it."""
    type_id = as_int(raw.get("TYPE_ID"))
    owner_type = as_int(raw.get("OWNER_TYPE_ID"))
    direction = as_int(raw.get("DIRECTION"))
    return {
        "id": as_int(raw.get("ID")),
        "kind": COMMUNICATION_KINDS.get(type_id or 0),
        "type_id": type_id,
        "provider_id": as_text(raw.get("PROVIDER_ID")),
        "incoming": {1: 1, 2: 0}.get(direction or 0) if type_id in (2, 4) else None,
        "owner_type_id": owner_type,
        "owner_id": as_int(raw.get("OWNER_ID")),
        "deal_id": as_int(raw.get("OWNER_ID")) if owner_type == DEAL_OWNER_TYPE else None,
        "subject": as_text(raw.get("SUBJECT")),
        "completed": as_flag(raw.get("COMPLETED")),
        "responsible_id": as_int(raw.get("RESPONSIBLE_ID")),
        "start_time": as_text(raw.get("START_TIME")),
        "end_time": as_text(raw.get("END_TIME")),
        "created": as_text(raw.get("CREATED")),
        "last_updated": as_text(raw.get("LAST_UPDATED")),
        "raw": dumps(raw),
    }


def plan_item_row(raw: RawRecord, entity_type_id: int, synced_at: str) -> Row:
    """A crm.item.list record (camelCase, typed values) of the smart process that holds plans."""
    return {
        "id": as_int(raw.get("id")),
        "entity_type_id": entity_type_id,
        "updated_time": as_text(raw.get("updatedTime")),
        "synced_at": synced_at,
        "raw": dumps(raw),
    }
