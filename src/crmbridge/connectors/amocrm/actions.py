"""Pure: the planner's actions told in amoCRM terms (tasks, lead PATCH items, lead notes), same keys and markers.

The planner speaks one vocabulary (Bitrix24's method parameters); this turns each action into the item
amoCRM's array endpoints take (reference §2, §5):

    create_task, create_todo  -> POST /api/v4/tasks        {text, complete_till, entity_id, entity_type: leads, ...}
    revert_stage              -> PATCH /api/v4/leads       {id, status_id, pipeline_id (+ the probability field)}
    set_field, reassign       -> PATCH /api/v4/leads       {id, custom_fields_values | responsible_user_id}
    comment                   -> POST /api/v4/leads/notes  {entity_id, note_type: common, params: {text}}
    notify                    -> POST /api/v4/tasks        a task on the lead for the recipient: amoCRM has no
                                                           notification API

Every created task and note carries the action's `[crmbridge:<hash>]` marker, so a lost answer is found
again by reading the lead's tasks or notes. amoCRM has no to-dos: a stage task the regulation wants as a
to-do is an amoCRM task (and a task counts as one when the rules look for it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import date, datetime, time, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from crmbridge.enforce.plan import FLAG_TASK_DEADLINE, Action, ActionKind, marker_of
from crmbridge.mapping.schema import AmoCRMBindingSpec, RegulationSpec

TASKS = "POST /api/v4/tasks"
LEADS = "PATCH /api/v4/leads"
NOTES = "POST /api/v4/leads/notes"
#: amoCRM task types (reference §5): 1 = call / follow-up
FOLLOW_UP = 1
WON_STATUS, LOST_STATUS = "142", "143"

_BBCODE_LINK = re.compile(r"\[url=[^\]]*\](.*?)\[/url\]", re.IGNORECASE | re.DOTALL)


def _stamp(value: Any, zone: tzinfo) -> int | None:
    """An ISO date-time (or date) the planner wrote -> unix seconds; a date means its midnight in `zone`."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        if len(text) == 10:  # a date
            moment = datetime.combine(date.fromisoformat(text), time(), zone)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp())


def _as_int(value: Any) -> int | Any:
    try:
        return int(str(value))
    except ValueError:
        return value


class AmoCRMDialect:
    """Turns planned actions into amoCRM requests for one binding (its pipelines, fields and probability field)."""

    def __init__(self, regulation: RegulationSpec, binding: AmoCRMBindingSpec, now: datetime) -> None:
        self.binding = binding
        zone_name = binding.timezone or (regulation.calendar.timezone if regulation.calendar else None)
        self.zone: tzinfo = ZoneInfo(zone_name) if zone_name else timezone.utc
        self.now = now
        #: status id -> its pipeline (142 / 143 are in every pipeline: they are never a revert's target)
        self.pipeline_of: dict[str, str] = {}
        for pipeline_id, pipeline in binding.pipelines.items():
            for status in pipeline.stages:
                if status not in (WON_STATUS, LOST_STATUS):
                    self.pipeline_of[status] = pipeline_id
        #: custom field id -> the regulated type it holds (how its value is written)
        self.field_type: dict[str, str] = {}
        for field_id, bound in binding.fields.items():
            spec = regulation.fields.get(field_id)
            if spec is not None:
                self.field_type[bound.crm_field] = spec.type
        if binding.probability_field:
            self.field_type[binding.probability_field] = "number"

    def translate(self, actions: Iterable[Action]) -> list[Action]:
        out = []
        for action in actions:
            translated = self.action(action)
            if translated is not None:
                out.append(translated)
        return out

    def action(self, action: Action) -> Action | None:
        """One action in amoCRM terms; None when it has nothing to write on amoCRM (a probability without a field)."""
        kind = action.kind
        if kind in (ActionKind.CREATE_TASK, ActionKind.CREATE_TODO):
            return replace(action, params=self._task(action), crm_method=TASKS)
        if kind is ActionKind.NOTIFY:
            return replace(action, params=self._notice(action), crm_method=TASKS)
        if kind is ActionKind.COMMENT:
            fields = action.params.get("fields") or {}
            return replace(action, params={"entity_id": _as_int(action.deal), "note_type": "common",
                                           "params": {"text": str(fields.get("COMMENT") or "")}}, crm_method=NOTES)
        item = self._lead_update(action)
        if item is None:
            return None
        return replace(action, params=item, crm_method=LEADS)

    # ------------------------------------------------------------ tasks

    def _task(self, action: Action) -> dict[str, Any]:
        params = action.params
        if action.kind is ActionKind.CREATE_TODO:  # crm.activity.todo.add parameters
            title, body = params.get("title"), params.get("description")
            responsible, deadline = params.get("responsibleId"), params.get("deadline")
        else:  # tasks.task.add {"fields": {...}}
            fields = params.get("fields") or {}
            title, body = fields.get("TITLE"), fields.get("DESCRIPTION")
            responsible, deadline = fields.get("RESPONSIBLE_ID"), fields.get("DEADLINE")
        # amoCRM tasks have one text: its first line is the title the stage task is recognised by
        text = "\n".join(part for part in (str(title or "").strip(), str(body or "").strip()) if part)
        if action.marker not in text:
            text = f"{text}\n{action.marker}"
        return {"text": text, "complete_till": _stamp(deadline, self.zone) or self._tomorrow(),
                "entity_id": _as_int(action.deal), "entity_type": "leads", "responsible_user_id": _as_int(responsible),
                "task_type_id": FOLLOW_UP}

    def _notice(self, action: Action) -> dict[str, Any]:
        """A notification as a task for its recipient on the lead (the head, or the manager), due tomorrow."""
        message = _BBCODE_LINK.sub(r"\1", str(action.params.get("MESSAGE") or action.summary)).strip()
        return {"text": f"{message}\n{marker_of(action.idempotency_key)}", "complete_till": self._tomorrow(),
                "entity_id": _as_int(action.deal), "entity_type": "leads",
                "responsible_user_id": _as_int(action.params.get("USER_ID") or action.recipient), "task_type_id": FOLLOW_UP}

    def _tomorrow(self) -> int:
        return int((self.now + FLAG_TASK_DEADLINE).timestamp())

    # ------------------------------------------------------------ lead updates

    def _lead_update(self, action: Action) -> dict[str, Any] | None:
        fields: Mapping[str, Any] = action.params.get("fields") or {}
        item: dict[str, Any] = {"id": _as_int(action.deal)}
        custom: list[dict[str, Any]] = []
        for name, value in fields.items():
            if name == "STAGE_ID":
                item["status_id"] = _as_int(value)
                pipeline = self.pipeline_of.get(str(value))
                if pipeline is not None:
                    item["pipeline_id"] = _as_int(pipeline)
            elif name == "ASSIGNED_BY_ID":
                item["responsible_user_id"] = _as_int(value)
            elif name == "OPPORTUNITY" or name == "price":
                item["price"] = int(float(value))
            elif name == "TITLE" or name == "name":
                item["name"] = str(value)
            elif name == "PROBABILITY":
                if self.binding.probability_field:
                    custom.append(self._value(self.binding.probability_field, value))
            elif str(name).isdigit():
                custom.append(self._value(str(name), value))
        if custom:
            item["custom_fields_values"] = custom
        return item if len(item) > 1 else None

    def _value(self, field_id: str, value: Any) -> dict[str, Any]:
        kind = self.field_type.get(field_id, "text")
        if value is None or value == "":
            return {"field_id": int(field_id), "values": None}
        if kind == "enum":
            return {"field_id": int(field_id), "values": [{"enum_id": _as_int(value)}]}
        if kind in ("date", "datetime"):
            return {"field_id": int(field_id), "values": [{"value": _stamp(value, self.zone)}]}
        if kind == "number":
            number = float(value)
            return {"field_id": int(field_id), "values": [{"value": int(number) if number.is_integer() else number}]}
        return {"field_id": int(field_id), "values": [{"value": str(value)}]}


__all__ = ["AmoCRMDialect", "LEADS", "NOTES", "TASKS"]
