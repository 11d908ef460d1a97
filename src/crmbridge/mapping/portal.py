"""What the portal has (pipelines, stages, fields, users) and the live check of a binding against it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ruamel.yaml import YAML

from crmbridge.mapping.load import Mappings, did_you_mean
from crmbridge.mapping.schema import IGNORE
from crmbridge.mapping.yamlpos import LocatedDocument, Problem, read_yaml

#: standard deal fields a binding may name; they are not in crm.deal.userfield.list
STANDARD_DEAL_FIELDS = {
    "ID", "TITLE", "CATEGORY_ID", "STAGE_ID", "STAGE_SEMANTIC_ID", "OPPORTUNITY", "CURRENCY_ID", "PROBABILITY",
    "ASSIGNED_BY_ID", "CONTACT_ID", "COMPANY_ID", "DATE_CREATE", "DATE_MODIFY", "CLOSED", "CLOSEDATE", "BEGINDATE",
    "MOVED_TIME", "SOURCE_ID", "COMMENTS", "OPENED", "TYPE_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "LAST_ACTIVITY_TIME",
    "SOURCE_DESCRIPTION", "ADDITIONAL_INFO", "LEAD_ID",
}
#: amoCRM lead fields that are not custom fields (they are not in /api/v4/leads/custom_fields)
STANDARD_LEAD_FIELDS = {"price", "name"}
#: yes/no CRM field types, and the option keys a binding uses for them (what the mapper reads values as)
BOOLEAN_TYPES = frozenset({"boolean", "checkbox"})
BOOLEAN_VALUES = ("1", "0")
#: which CRM field types can hold which regulated type (Bitrix24 USER_TYPE_ID and amoCRM custom field types)
COMPATIBLE = {
    "text": {"string", "char", "text", "url", "employee", "crm", "integer", "double", "textarea", "numeric",
             "streetaddress"},
    "number": {"double", "integer", "money", "numeric", "price", "monetary"},
    "date": {"date", "datetime", "date_time", "birthday"},
    "datetime": {"datetime", "date", "date_time"},
    # a yes/no field (Bitrix24 boolean: 1 / 0; amoCRM checkbox: true / false) is an enum of two options
    "enum": {"enumeration", "crm_status", "select", "radiobutton", "multiselect", "boolean", "checkbox"},
    "link": {"url", "string", "file", "text"},
}


@dataclass
class PortalField:
    name: str
    type: str
    label: str
    options: dict[str, str] = field(default_factory=dict)  # option id -> label


@dataclass
class PortalSnapshot:
    """The portal's structure, read from the cache or the API."""

    pipelines: dict[str, str] = field(default_factory=dict)  # CATEGORY_ID -> name
    stages: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # CATEGORY_ID -> STAGE_ID -> (name, semantics)
    fields: dict[str, PortalField] = field(default_factory=dict)
    users: dict[str, tuple[str, bool, tuple[str, ...]]] = field(default_factory=dict)  # id -> (name, active, departments)
    departments: dict[str, str] = field(default_factory=dict)  # department id -> name (when the portal says)
    heads: dict[str, str] = field(default_factory=dict)  # department id -> its head's user id

    @classmethod
    def from_rows(
        cls,
        pipelines: Iterable[Mapping[str, Any]],
        stages: Iterable[Mapping[str, Any]],
        deal_fields: Iterable[Mapping[str, Any]],
        users: Iterable[Mapping[str, Any]],
        departments: Iterable[Mapping[str, Any]] = (),
    ) -> "PortalSnapshot":
        """From rows shaped like the cache's tables, whether read from the cache or converted from the API."""
        snapshot = cls()
        for row in sorted(pipelines, key=lambda r: (r.get("sort") or 0, r["id"])):
            snapshot.pipelines[str(row["id"])] = row["name"] or ""
        for row in sorted(stages, key=lambda r: (r.get("category_id") or 0, r.get("sort") or 0)):
            snapshot.stages.setdefault(str(row["category_id"] or 0), {})[row["status_id"]] = (row["name"] or "", row["semantics"] or "P")
        for category in snapshot.stages:
            snapshot.pipelines.setdefault(category, "")
        for row in deal_fields:
            options = {str(item.get("ID")): str(item.get("VALUE") or "") for item in json.loads(row["options"] or "[]")
                       if isinstance(item, dict)}
            snapshot.fields[row["field_name"]] = PortalField(row["field_name"], row["user_type_id"] or "", row["label"] or "", options)
        for row in users:
            name = " ".join(part for part in (row["name"], row["last_name"]) if part)
            member_of = tuple(str(item) for item in json.loads(row["departments"] or "[]"))
            snapshot.users[str(row["id"])] = (name, bool(row["active"]), member_of)
        for row in departments:
            snapshot.departments[str(row["id"])] = row.get("name") or ""
            if row.get("head_id"):
                snapshot.heads[str(row["id"])] = str(row["head_id"])
        return snapshot

    @property
    def empty(self) -> bool:
        return not self.stages


_SEMANTICS_MARK = re.compile(r"\s*\((S|F)\)$")
#: what discover appends to the comment of a stage it could not decide on ("— looks like proposal?"); the comment
#: stays when the admin settles the `todo`, so the live check must not read it as part of the stage's name
GUESS_NOTE = " — looks like {}?"
_GUESS_NOTE = re.compile(r"\s+—\s+looks like [\w-]+\?$")


def same_name(left: str, right: str) -> bool:
    """Two CRM names are the same but for case and runs of white space (a comment keeps a name on one line)."""
    return " ".join(left.split()).casefold() == " ".join(right.split()).casefold()


def _stage_comments(text: str) -> dict[tuple[str, str], str]:
    """The `# label` comments after each stage of the binding: what the CRM stage was called when mapped."""
    comments: dict[tuple[str, str], str] = {}
    try:
        data = YAML(typ="rt").load(text)
        for category, pipeline in (data.get("pipelines") or {}).items():
            stages = pipeline.get("stages") if hasattr(pipeline, "get") else None
            items = getattr(getattr(stages, "ca", None), "items", {}) or {}
            for crm_stage, tokens in items.items():
                token = tokens[2] if len(tokens) > 2 else None
                if token is not None:
                    # the token may run on over the comment lines after it: the stage's own is the first
                    label = token.value.lstrip().split("\n", 1)[0].lstrip("#").strip()
                    # discover marks final stages with " (S)" / " (F)" and guesses with "— looks like …?": only
                    # those go, a name may have brackets of its own
                    label = _SEMANTICS_MARK.sub("", _GUESS_NOTE.sub("", label)).strip()
                    if label:
                        comments[(str(category), str(crm_stage))] = label
    except Exception:  # comments are a courtesy; a file that loaded fine may still have odd ones
        return comments
    return comments


def lint_live(mappings: Mappings, snapshot: PortalSnapshot, binding_text: str) -> list[Problem]:
    """Resolve every pipeline, stage, field, enum option and user of the binding against the portal."""
    doc: LocatedDocument = read_yaml(binding_text, mappings.binding_path)
    doc.problems.clear()
    binding = mappings.binding
    comments = _stage_comments(binding_text)
    for category, pipeline in binding.pipelines.items():
        where = ("pipelines", category)
        if category not in snapshot.pipelines:
            doc.problem(where, f"pipeline {category} does not exist on the portal",
                        "remove it or use one of: " + ", ".join(f"{cid} ({name})" for cid, name in snapshot.pipelines.items()),
                        key=True)
            continue
        portal_name = snapshot.pipelines[category]
        if pipeline.name and portal_name and not same_name(pipeline.name, portal_name):
            doc.problem(where + ("name",), f"pipeline {category} is now called «{portal_name}» on the portal, the binding says «{pipeline.name}»",
                        "check it is still the same pipeline and update `name`")
        portal_stages = snapshot.stages.get(category, {})
        for crm_stage in pipeline.stages:
            if crm_stage not in portal_stages:
                doc.problem(where + ("stages", crm_stage), f'CRM stage "{crm_stage}" does not exist in pipeline {category}',
                            did_you_mean(crm_stage, portal_stages), key=True)
                continue
            was = comments.get((category, crm_stage))
            now = portal_stages[crm_stage][0]
            if was and now and not same_name(was, now):
                doc.problem(where + ("stages", crm_stage), f'CRM stage "{crm_stage}" was renamed on the portal: «{was}» -> «{now}»',
                            "check the mapping still fits and update the comment", key=True)
        if pipeline.direction != IGNORE:
            for crm_stage, (name, semantics) in portal_stages.items():
                if crm_stage not in pipeline.stages:
                    doc.problem(where + ("stages",), f'CRM stage "{crm_stage}" («{name}») of pipeline {category} is not mapped',
                                f"add `{crm_stage}: <stage id | won | lost | ignore>`", key=True)
    for category, name in snapshot.pipelines.items():
        if category not in binding.pipelines:
            doc.problem(("pipelines",), f"pipeline {category} («{name}») of the portal is not in the binding",
                        f"add `{category}:` with a direction, or `direction: ignore`", key=True)
    regulation = mappings.regulation
    standard = STANDARD_LEAD_FIELDS if binding.crm == "amocrm" else STANDARD_DEAL_FIELDS
    for field_id, bound in binding.fields.items():
        where = ("fields", field_id)
        if bound.crm_field in standard:
            continue
        portal_field = snapshot.fields.get(bound.crm_field)
        if portal_field is None:
            doc.problem(where, f'CRM field {bound.crm_field} does not exist on the portal',
                        did_you_mean(bound.crm_field, list(snapshot.fields) + sorted(standard)), key=True)
            continue
        kind = regulation.fields[field_id].type if field_id in regulation.fields else None
        if kind in COMPATIBLE and portal_field.type and portal_field.type not in COMPATIBLE[kind]:
            doc.problem(where, f'{bound.crm_field} («{portal_field.label}») is {portal_field.type} on the portal, "{field_id}" is {kind}',
                        "bind a CRM field of a matching type", key=True)
        if portal_field.type in BOOLEAN_TYPES:
            for option in bound.options:
                if option not in BOOLEAN_VALUES:
                    doc.problem(where + ("options", option), f"{bound.crm_field} is a yes/no field: its values are 1 and 0",
                                'write `options: {"1": <option for yes>, "0": <option for no>}`', key=True)
            for value, word in (("1", "yes"), ("0", "no")):
                if value not in bound.options:
                    doc.problem(where + ("options",), f"the {word} value ({value}) of {bound.crm_field} is not bound",
                                f'add `"{value}": <option id>`', key=True)
        for option in bound.options:
            if portal_field.options and option not in portal_field.options:
                doc.problem(where + ("options", option), f"enum option {option} does not exist in {bound.crm_field}",
                            "use one of: " + ", ".join(f"{oid} ({label})" for oid, label in portal_field.options.items()), key=True)
        if kind == "enum" and portal_field.options:
            for option, label in portal_field.options.items():
                if option not in bound.options:
                    doc.problem(where + ("options",), f"enum option {option} («{label}») of {bound.crm_field} is not bound",
                                f"add `{option}: <option id>`", key=True)
    probability_field = getattr(binding, "probability_field", None)
    if probability_field is not None:
        portal_field = snapshot.fields.get(probability_field)
        if portal_field is None:
            doc.problem(("probability_field",), f"CRM field {probability_field} does not exist on the account",
                        did_you_mean(probability_field, list(snapshot.fields)))
        elif portal_field.type and portal_field.type not in COMPATIBLE["number"]:
            doc.problem(("probability_field",), f"{probability_field} («{portal_field.label}») is {portal_field.type}, "
                        "a probability is a number", "bind a numeric custom field")
    for name, team in binding.teams.items():
        for index, user in enumerate(team.members):
            _check_user(doc, snapshot, ("teams", name, "members", index), user)
    for number, head in enumerate(binding.heads):
        _check_user(doc, snapshot, ("heads", number, "user"), head.user)
    return sorted(set(doc.problems))


def _check_user(doc: LocatedDocument, snapshot: PortalSnapshot, path: tuple[Any, ...], user: str) -> None:
    if user not in snapshot.users:
        doc.problem(path, f"user {user} does not exist on the portal", "use an ID from the portal's employee list")
    elif not snapshot.users[user][1]:
        doc.problem(path, f"user {user} ({snapshot.users[user][0]}) is not active on the portal (fired?)",
                    "remove them or replace them with an active user")


def users_by_department(snapshot: PortalSnapshot) -> Mapping[str, list[str]]:
    """Active users grouped by department, for discover's draft teams."""
    groups: dict[str, list[str]] = {}
    for user, (_, active, departments) in snapshot.users.items():
        if active:
            for department in departments or ("?",):
                groups.setdefault(department, []).append(user)
    return groups


