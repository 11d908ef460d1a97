"""Pure: a CRM's raw records in the flat vocabulary DealMapper reads (Bitrix24's keys), one adapter per CRM.

Bitrix24 records already speak it. An amoCRM lead (v4: `price`, `status_id`, unix seconds, a list of
`custom_fields_values`) becomes `{"ID", "TITLE", "CATEGORY_ID", "STAGE_ID", "OPPORTUNITY", ...}` with each
custom field under its id (enum fields by enum id, as bindings name options), so one mapper, one
regulation and one evaluator serve both CRMs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone, tzinfo
from typing import Any

RawRecord = Mapping[str, Any]
Adapter = Callable[[RawRecord], dict[str, Any]]

WON_STATUS, LOST_STATUS = 142, 143


def _iso(stamp: Any, zone: tzinfo) -> str | None:
    if stamp is None or stamp == "" or isinstance(stamp, bool):
        return None
    try:
        return datetime.fromtimestamp(int(stamp), zone).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _embedded_ids(record: RawRecord, key: str) -> list[Mapping[str, Any]]:
    embedded = record.get("_embedded")
    items = embedded.get(key) if isinstance(embedded, Mapping) else None
    return [item for item in items or [] if isinstance(item, Mapping)]


def _field_values(record: RawRecord) -> dict[str, Any]:
    """custom_fields_values -> {field id: value}: enum ids (as text) where the values have them, else the values;
    one value as a scalar, several as a list (the mapper reads the first)."""
    out: dict[str, Any] = {}
    for field in record.get("custom_fields_values") or ():
        if not isinstance(field, Mapping):
            continue
        found = []
        for value in field.get("values") or ():
            if not isinstance(value, Mapping):
                continue
            if value.get("enum_id") is not None:
                found.append(str(value["enum_id"]))
            elif value.get("value") is not None:
                found.append(value["value"])
        if found:
            out[str(field.get("field_id"))] = found[0] if len(found) == 1 else found
    return out


def amocrm_lead(zone: tzinfo = timezone.utc, probability_field: str | None = None) -> Adapter:
    """An adapter for amoCRM leads; `probability_field` is the custom field the binding names for R4."""

    def adapt(lead: RawRecord) -> dict[str, Any]:
        status = lead.get("status_id")
        closed = status in (WON_STATUS, LOST_STATUS)
        contacts = _embedded_ids(lead, "contacts")
        main = next((item for item in contacts if item.get("is_main")), contacts[0] if contacts else None)
        companies = _embedded_ids(lead, "companies")
        record = _field_values(lead)
        record.update({
            "ID": _text(lead.get("id")),
            "TITLE": _text(lead.get("name")),
            "CATEGORY_ID": _text(lead.get("pipeline_id")),
            "STAGE_ID": _text(status),
            "STAGE_SEMANTIC_ID": "S" if status == WON_STATUS else "F" if status == LOST_STATUS else "P",
            "OPPORTUNITY": lead.get("price"),
            "ASSIGNED_BY_ID": _text(lead.get("responsible_user_id")),
            "DATE_CREATE": _iso(lead.get("created_at"), zone),
            "DATE_MODIFY": _iso(lead.get("updated_at"), zone),
            # amoCRM keeps no last-activity time on a lead: its last change is the closest thing (R11)
            "LAST_ACTIVITY_TIME": _iso(lead.get("updated_at"), zone),
            "CLOSED": "Y" if closed else "N",
            "CLOSEDATE": _iso(lead.get("closed_at"), zone),
            "CONTACT_ID": _text(main.get("id")) if main else "",
            "COMPANY_ID": _text(companies[0].get("id")) if companies else "",
            "price": lead.get("price"),
            "name": lead.get("name"),
        })
        if probability_field:
            record["PROBABILITY"] = record.get(probability_field)
        return record

    return adapt


def _multitext(record: RawRecord, code: str) -> list[dict[str, str]]:
    found = []
    for field in record.get("custom_fields_values") or ():
        if isinstance(field, Mapping) and field.get("field_code") == code:
            found += [{"VALUE": str(value.get("value"))} for value in field.get("values") or ()
                      if isinstance(value, Mapping) and str(value.get("value") or "").strip()]
    return found


def amocrm_client(zone: tzinfo = timezone.utc) -> Adapter:
    """An adapter for amoCRM contacts and companies: name, PHONE / EMAIL by their system codes (R6)."""

    def adapt(record: RawRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"ID": _text(record.get("id")), "PHONE": _multitext(record, "PHONE"),
                               "EMAIL": _multitext(record, "EMAIL"), "DATE_MODIFY": _iso(record.get("updated_at"), zone)}
        if "first_name" in record or "last_name" in record:
            out["NAME"] = record.get("first_name") or record.get("name")
            out["LAST_NAME"] = record.get("last_name")
        else:
            out["TITLE"] = record.get("name")
        return out

    return adapt


def same(record: RawRecord) -> dict[str, Any]:
    """Bitrix24: records already speak the mapper's vocabulary."""
    return record  # type: ignore[return-value]


__all__ = ["Adapter", "amocrm_client", "amocrm_lead", "same"]
