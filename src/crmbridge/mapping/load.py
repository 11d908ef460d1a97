"""Load and lint the regulation and binding files: every problem of a file at once, as `file:line:col: what — fix`."""

from __future__ import annotations

import string
import types
import typing
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path as FsPath
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from crmbridge.errors import MappingError
from crmbridge.mapping.schema import (
    IGNORE,
    LOST,
    RULE_IDS,
    WON,
    AmoCRMBindingSpec,
    AnyBinding,
    BindingSpec,
    RegulationSpec,
    RulesSpec,
)
from crmbridge.mapping.yamlpos import LocatedDocument, Path, Problem, read_yaml

REGULATION_FILE = "regulation.yaml"
TODO = "todo"  # what `crmbridge discover` writes where the admin must decide
BINDING_FILE = "bitrix24.yaml"
#: CRM -> the binding file an admin edits for it
BINDING_FILES = {"bitrix24": BINDING_FILE, "amocrm": "amocrm.yaml"}
CRM_NAMES = {"bitrix24": "Bitrix24", "amocrm": "amoCRM"}
#: amoCRM's won and lost statuses exist in every pipeline (reference §3)
AMOCRM_SHARED_STATUSES = frozenset({"142", "143"})


def binding_file(crm: str) -> str:
    return BINDING_FILES.get(crm, f"{crm}.yaml")


@dataclass(frozen=True)
class Mappings:
    """The admin's files, loaded and linted: what the rest of crmbridge works from."""

    regulation: RegulationSpec
    binding: AnyBinding
    regulation_path: str
    binding_path: str

    @property
    def crm(self) -> str:
        return self.binding.crm


def did_you_mean(word: Any, candidates: Iterable[str]) -> str:
    """` — did you mean "x"?` style hint, or a list of what is allowed."""
    options = sorted({str(candidate) for candidate in candidates})
    close = get_close_matches(str(word), options, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    if not options:
        return "nothing is allowed here"
    shown = ", ".join(options[:12]) + (", …" if len(options) > 12 else "")
    return f"use one of: {shown}"


# ---------------------------------------------------------------- pydantic errors -> problems


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            structured = [arg for arg in members if _is_model(arg) or typing.get_origin(arg) in (dict, list)]
            annotation = structured[0] if structured else members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_at(model: type[BaseModel], loc: Iterable[Any]) -> Any:
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if _is_model(annotation):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return None
            annotation = info.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return _unwrap(annotation)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[tuple[Any, ...], bool]:
    """Drop pydantic's internal loc parts (validator names) and say whether the error is about a dict key."""
    cleaned: list[Any] = []
    about_key = False
    node = data
    for part in loc:
        if part == "[key]":
            about_key = True
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
            cleaned.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            cleaned.append(part)
        elif isinstance(part, str) and (part.startswith("function-") or part[:1].isupper() and not part.startswith("R")):
            # pydantic's own loc parts (validator and model names such as TaskSpec); our keys are lower case,
            # and the upper-case ones (R1..R11, CRM stage ids) exist in the data, so they were kept above
            continue
        else:
            cleaned.append(part)
            node = None
    return tuple(cleaned), about_key


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return str(value)


_KIND = {"dict_type": "a mapping (key: value)", "model_type": "a mapping (key: value)", "list_type": "a list",
         "string_type": "text", "int_type": "a whole number", "int_parsing": "a whole number",
         "int_from_float": "a whole number", "bool_type": "true or false", "bool_parsing": "true or false",
         "date_parsing": "a date like 2026-01-31", "date_from_datetime_parsing": "a date like 2026-01-31",
         "date_type": "a date like 2026-01-31", "float_parsing": "a number", "float_type": "a number"}


def _translate(doc: LocatedDocument, root: type[BaseModel], error: dict[str, Any]) -> None:
    loc, about_key = _clean_loc(tuple(error["loc"]), doc.data)
    kind = error["type"]
    value = error.get("input")
    name = str(loc[-1]) if loc else "file"
    if kind == "extra_forbidden":
        allowed = _type_at(root, loc[:-1])
        keys = list(allowed.model_fields) if _is_model(allowed) else []
        doc.problem(loc, f'unknown key "{name}"', did_you_mean(name, keys) + " (or remove it)", key=True)
        return
    if kind == "missing":
        expected = _type_at(root, loc[:-1])
        info = expected.model_fields.get(name) if _is_model(expected) else None
        explain = f" ({info.description})" if info is not None and info.description else ""
        where = "the file" if len(loc) == 1 else f'"{loc[-2]}"'
        doc.problem(loc[:-1], f'missing key "{name}" in {where}', f"add `{name}: …`{explain}", key=True)
        return
    if about_key:
        expected = error.get("ctx", {}).get("expected", "")
        options = [part.strip(" '") for part in expected.replace(" or ", ",").split(",") if part.strip(" '")]
        if kind == "literal_error":
            doc.problem(loc + (value,) if value in _container(doc.data, loc) else loc,
                        f'unknown key "{value}"', did_you_mean(value, options), key=True)
        elif kind == "value_error":  # a key checked by a validator (e.g. a period) says itself what is wrong
            what, _, fix = str(error.get("ctx", {}).get("error", error["msg"])).partition(" — ")
            doc.problem(loc + (value,) if value in _container(doc.data, loc) else loc, what, fix, key=True)
        else:
            doc.problem(loc + (value,) if value in _container(doc.data, loc) else loc,
                        f'"{value}" is not a valid id', "use lower-case latin letters, digits and _, e.g. client_interest",
                        key=True)
        return
    if kind in ("literal_error", "enum"):
        expected = error.get("ctx", {}).get("expected", "")
        options = [part.strip(" '") for part in expected.replace(" or ", ",").split(",") if part.strip(" '")]
        doc.problem(loc, f'"{name}" is {_show(value)}, which is not allowed', did_you_mean(value, options))
        return
    if kind == "string_pattern_mismatch":
        if name == "crm_field" and root is AmoCRMBindingSpec:
            what, fix = "not an amoCRM lead field", "write the custom field's id (a number, e.g. 500101), or price / name"
        elif name == "crm_field":
            what, fix = "not a CRM field name", "write the CRM field name in capitals, e.g. UF_CRM_1700000101"
        elif name == "working_hours":
            what, fix = "not a working day", "write start-end in 24h time, e.g. 09:00-18:00"
        else:
            what, fix = "not a valid id", "an id uses lower-case latin letters, digits and _, e.g. client_interest"
        doc.problem(loc, f'"{name}" is {_show(value)}, {what}', fix)
        return
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        fix = "use a percentage from 0 to 100" if name == "probability" else "change the value"
        doc.problem(loc, f'"{name}" is {_show(value)}, out of range: {error["msg"].replace("Input should be", "it should be")}', fix)
        return
    if kind in ("too_short", "too_long"):
        doc.problem(loc, f'"{name}" {error["msg"].replace("should have", "needs").lower()}', "add the missing entries")
        return
    if kind == "value_error":
        text = str(error.get("ctx", {}).get("error", error["msg"]))
        what, _, fix = text.partition(" — ")
        doc.problem(loc, what, fix or "correct the value")
        return
    if kind in _KIND:
        doc.problem(loc, f'"{name}" should be {_KIND[kind]}, got {_show(value)}', f"write {_KIND[kind]} here")
        return
    doc.problem(loc, f'"{name}": {error["msg"]}', "correct the value")


def _container(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return {}
    return data if isinstance(data, dict) else {}


def validate_document(doc: LocatedDocument, model: type[BaseModel]) -> BaseModel | None:
    """Validate a located YAML document against a model; every error becomes a problem of `doc` with its position."""
    return _validate(doc, model)


def _validate(doc: LocatedDocument, model: type[BaseModel]) -> BaseModel | None:
    if doc.data is None and doc.problems:
        return None
    if not isinstance(doc.data, dict):
        doc.problem((), f"the file should be a mapping of keys, got {_show(doc.data)}",
                    "start from the shipped example in mappings/")
        return None
    try:
        return model.model_validate(doc.data)
    except ValidationError as invalid:
        for error in invalid.errors(include_url=False):
            _translate(doc, model, error)
        return None


#: validate a located YAML document against a pydantic model, adding file:line:col problems (jobs/ uses it too)
validate_document = _validate


# ---------------------------------------------------------------- regulation lint


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_COMMON_PLACEHOLDERS = {"rule", "deal", "title", "stage", "stage_name", "direction", "missing", "since", "manager"}
RULE_PLACEHOLDERS: dict[str, set[str]] = {
    "R1": {"from_stage", "skipped"},
    "R2": set(),
    "R3": {"task"},
    "R4": {"expected", "actual"},
    "R5": {"next_contact", "months"},
    "R6": {"client"},
    "R7": {"sla", "waited"},
    "R8": {"within", "waited"},
    "R9": {"due", "overdue_days"},
    "R10": {"segment", "expected"},
    "R11": {"days", "last_activity"},
}
_RULE_STAGE_PARAMS = {"R1": ("won_from", "created_in"), "R6": ("stages",), "R7": ("stages",), "R8": ("from_stages",)}
_RULE_FIELD_PARAMS = {
    "R5": {"reason_field": ("enum",), "next_contact_field": ("date", "datetime")},
    "R7": {"contact_field": ("date", "datetime")},
    "R8": {"paid_field": ("date", "datetime")},
    "R9": {"due_field": ("date", "datetime"), "paid_field": ("date", "datetime")},
    "R10": {"segment_field": ("enum",)},
}


def _lint_regulation(doc: LocatedDocument) -> None:
    data = _dict(doc.data)
    fields = _dict(data.get("fields"))
    directions = _dict(data.get("directions"))
    all_stage_ids = {str(stage.get("id")) for direction in directions.values()
                     for stage in _list(_dict(direction).get("stages")) if isinstance(stage, dict)}

    def check_requirement(path: Path, item: Any) -> None:
        field_id = item if isinstance(item, str) else _dict(item).get("field")
        where = path if isinstance(item, str) else path + ("field",)
        if not isinstance(field_id, str):
            return
        if field_id not in fields:
            doc.problem(where, f'unknown regulated field "{field_id}"',
                        did_you_mean(field_id, fields) + " (or declare it under `fields:`)")
            return
        spec = _dict(fields[field_id])
        equals = _dict(item).get("equals")
        if equals is not None and str(equals) not in [str(o) for o in _list(spec.get("options"))]:
            doc.problem(path + ("equals",), f'"{equals}" is not an option of field "{field_id}"',
                        did_you_mean(equals, [str(o) for o in _list(spec.get("options"))]))
        if _dict(item).get("future") is True and spec.get("type") not in ("date", "datetime"):
            doc.problem(path + ("future",), f'`future` applies to dates, but "{field_id}" is {spec.get("type")}',
                        "remove `future` or make the field a date")

    for direction_id, direction in directions.items():
        direction = _dict(direction)
        base = ("directions", direction_id)
        seen: dict[str, int] = {}
        for index, stage in enumerate(_list(direction.get("stages"))):
            stage = _dict(stage)
            stage_id = stage.get("id")
            if isinstance(stage_id, str):
                if stage_id in (WON, LOST, IGNORE):
                    doc.problem(base + ("stages", index, "id"), f'"{stage_id}" is reserved',
                                f"describe {stage_id} under `{stage_id}:` of the direction" if stage_id != IGNORE
                                else "choose another id")
                elif stage_id in seen:
                    doc.problem(base + ("stages", index, "id"),
                                f'duplicate stage id "{stage_id}" in direction "{direction_id}" '
                                f'(also stage {seen[stage_id] + 1}, line {doc.at(base + ("stages", seen[stage_id], "id"))[0]})',
                                "give every stage its own id")
                else:
                    seen[stage_id] = index
            for key in ("requires_to_enter", "requires_to_leave"):
                for number, item in enumerate(_list(stage.get(key))):
                    check_requirement(base + ("stages", index, key, number), item)
        for final in (WON, LOST):
            for number, item in enumerate(_list(_dict(direction.get(final)).get("requires"))):
                check_requirement(base + (final, "requires", number), item)
        for rule_id, override in _dict(direction.get("rules")).items():
            if rule_id not in RULE_IDS or not isinstance(override, dict):
                continue
            _lint_rule(doc, base + ("rules", rule_id), rule_id, override, fields, set(seen), direction_only=True)
            global_rule = _dict(_dict(data.get("rules")).get(rule_id))
            merged = {**global_rule, **override}
            try:
                RulesSpec.model_validate({rule_id: merged})
            except ValidationError as invalid:
                for error in invalid.errors(include_url=False):
                    param = error["loc"][1] if len(error["loc"]) > 1 else None
                    where = base + ("rules", rule_id) + tuple(error["loc"][1:])
                    if error["type"] == "extra_forbidden":
                        known = getattr(RulesSpec.model_fields[rule_id].annotation, "model_fields", {})
                        doc.problem(where, f'unknown parameter "{param}" of {rule_id}',
                                    did_you_mean(param, known) + " (or remove it)", key=True)
                    elif param in override:
                        _translate(doc, RegulationSpec, {**error, "loc": where})

    rules = _dict(data.get("rules"))
    for rule_id, params in rules.items():
        if rule_id in RULE_IDS and isinstance(params, dict):
            _lint_rule(doc, ("rules", rule_id), rule_id, params, fields, all_stage_ids, direction_only=False)


def _lint_rule(doc: LocatedDocument, path: Path, rule_id: str, params: dict[str, Any], fields: dict[str, Any],
               stage_ids: set[str], *, direction_only: bool) -> None:
    scope = "this direction" if direction_only else "any direction"
    for param in _RULE_STAGE_PARAMS.get(rule_id, ()):
        allowed = stage_ids | {WON} if rule_id == "R8" else stage_ids
        for index, stage_id in enumerate(_list(params.get(param))):
            if isinstance(stage_id, str) and stage_id not in allowed:
                doc.problem(path + (param, index), f'{rule_id}.{param}: no stage "{stage_id}" in {scope}',
                            did_you_mean(stage_id, allowed))
    if params.get("mode") != "off":
        for param, kinds in _RULE_FIELD_PARAMS.get(rule_id, {}).items():
            field_id = params.get(param)
            if not isinstance(field_id, str):
                continue
            if field_id not in fields:
                doc.problem(path + (param,), f'{rule_id}.{param}: unknown regulated field "{field_id}"',
                            did_you_mean(field_id, fields) + " (or declare it under `fields:`, or set `mode: off`)")
            elif _dict(fields[field_id]).get("type") not in kinds:
                doc.problem(path + (param,), f'{rule_id}.{param}: field "{field_id}" is {_dict(fields[field_id]).get("type")}',
                            f"point it at a field of type {' or '.join(kinds)}")
    options_of = lambda field_id: [str(o) for o in _list(_dict(fields.get(field_id)).get("options"))]  # noqa: E731
    if rule_id == "R5":
        reason_field = params.get("reason_field", "loss_reason")
        for index, reason in enumerate(_list(params.get("reasons"))):
            if reason_field in fields and str(reason) not in options_of(reason_field):
                doc.problem(path + ("reasons", index), f'R5.reasons: "{reason}" is not an option of "{reason_field}"',
                            did_you_mean(reason, options_of(reason_field)))
    if rule_id == "R10":
        segment_field = params.get("segment_field", "client_segment")
        for index, segment in enumerate(_list(params.get("segments"))):
            option = _dict(segment).get("option")
            if segment_field in fields and isinstance(option, str) and option not in options_of(segment_field):
                doc.problem(path + ("segments", index, "option"),
                            f'R10: "{option}" is not an option of "{segment_field}"',
                            did_you_mean(option, options_of(segment_field)))
    message = params.get("message")
    if isinstance(message, str):
        allowed = _COMMON_PLACEHOLDERS | RULE_PLACEHOLDERS.get(rule_id, set())
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(message) if name is not None]
        except ValueError as bad:
            doc.problem(path + ("message",), f"{rule_id}.message has a broken placeholder ({bad})",
                        "write placeholders as {title}; double braces {{ }} for literal braces")
            return
        for name in names:
            if name.split(".")[0].split("[")[0] not in allowed:
                doc.problem(path + ("message",), f"{rule_id}.message: unknown placeholder {{{name}}}",
                            did_you_mean(name, allowed))


# ---------------------------------------------------------------- binding lint


def _lint_binding(doc: LocatedDocument, regulation: RegulationSpec | None, crm: str = "bitrix24") -> None:
    data = _dict(doc.data)
    if regulation is None:
        return
    amocrm = crm == "amocrm"
    field_example = "<custom field id>" if amocrm else "UF_CRM_…"
    directions = regulation.directions
    owner_of_stage: dict[str, str] = {}
    for category, pipeline in _dict(data.get("pipelines")).items():
        pipeline = _dict(pipeline)
        base = ("pipelines", category)
        direction_id = pipeline.get("direction")
        if not isinstance(direction_id, str):
            continue
        direction = directions.get(direction_id)
        if direction_id == TODO:
            doc.problem(base + ("direction",), f"pipeline {category}: the direction is still todo",
                        "choose one of: " + ", ".join([*directions, IGNORE]))
        elif direction is None and direction_id != IGNORE:
            doc.problem(base + ("direction",), f'unknown direction "{direction_id}"',
                        did_you_mean(direction_id, list(directions) + [IGNORE]))
        allowed = set(direction.stage_ids) | {WON, LOST, IGNORE} if direction is not None else {IGNORE, WON, LOST}
        mapped: set[str] = set()
        for crm_stage, target in _dict(pipeline.get("stages")).items():
            where = base + ("stages", crm_stage)
            prefix = crm_stage.split(":")[0][1:] if ":" in crm_stage and crm_stage.startswith("C") else "0"
            if not amocrm and prefix != str(category):
                doc.problem(where, f'CRM stage "{crm_stage}" belongs to pipeline {prefix}, not {category}',
                            f"move it under pipelines: {prefix}", key=True)
            if amocrm and not str(crm_stage).isdigit():
                doc.problem(where, f'"{crm_stage}" is not an amoCRM status id',
                            "write the status id (a number; 142 won, 143 lost), see `crmbridge discover`", key=True)
            if crm_stage in owner_of_stage and not (amocrm and crm_stage in AMOCRM_SHARED_STATUSES):
                doc.problem(where, f'CRM stage "{crm_stage}" is mapped twice (also in pipeline {owner_of_stage[crm_stage]})',
                            "map every CRM stage once", key=True)
            owner_of_stage.setdefault(crm_stage, str(category))
            if target == TODO:
                doc.problem(where, f'CRM stage "{crm_stage}" is still todo',
                            "map it to one of: " + ", ".join(sorted(allowed)))
            elif isinstance(target, str) and direction is not None and target not in allowed:
                doc.problem(where, f'"{target}" is not a stage of direction "{direction_id}"',
                            did_you_mean(target, allowed))
            if isinstance(target, str):
                mapped.add(target)
        if direction is not None:
            for stage_id in (*direction.stage_ids, WON, LOST):
                if stage_id not in mapped:
                    doc.problem(base + ("stages",), f'regulated stage "{stage_id}" of "{direction_id}" has no CRM stage in pipeline {category}',
                                f"map one of the pipeline's {'status ids' if amocrm else 'STAGE_IDs'} to {stage_id}",
                                key=True)

    fields = regulation.fields
    bound = _dict(data.get("fields"))
    for field_id, binding in bound.items():
        where = ("fields", field_id)
        if field_id not in fields:
            doc.problem(where, f'unknown regulated field "{field_id}"', did_you_mean(field_id, fields), key=True)
            continue
        spec = fields[field_id]
        crm_field = binding if isinstance(binding, str) else _dict(binding).get("crm_field")
        if isinstance(crm_field, str) and crm_field.upper().startswith("TODO"):
            doc.problem(where, f'the CRM field of "{field_id}" is still todo',
                        f"write its {field_example} (see `crmbridge discover` comments)", key=True)
        options = _dict(_dict(binding).get("options"))
        if options and spec.type != "enum":
            doc.problem(where + ("options",), f'"{field_id}" is {spec.type}, only enum fields have options',
                        "remove `options`", key=True)
            continue
        for crm_option, option in options.items():
            if option == TODO:
                doc.problem(where + ("options", crm_option), f'CRM option {crm_option} of "{field_id}" is still todo',
                            "map it to one of: " + ", ".join(spec.options))
            elif isinstance(option, str) and option not in spec.options:
                doc.problem(where + ("options", crm_option), f'"{option}" is not an option of "{field_id}"',
                            did_you_mean(option, spec.options))
        if spec.type == "enum":
            missing = [option for option in spec.options if option not in {str(v) for v in options.values()}]
            if missing:
                doc.problem(where, f'enum options of "{field_id}" not bound: {", ".join(missing)}',
                            "add `options: {<CRM option id>: <option>}` for each", key=True)
    # only directions some pipeline is bound to read fields: a direction without a pipeline demands nothing
    in_use = {pipeline.get("direction") for pipeline in map(_dict, _dict(data.get("pipelines")).values())}
    for field_id, uses in sorted(needed_fields(regulation, in_use).items()):
        if field_id not in bound and fields[field_id].type not in ("phone", "email"):
            rules = sorted({use.split()[0] for use in uses if use.startswith("R")}, key=lambda rule: int(rule[1:]))
            drop = ("drop it from those stages' requirements" if any(not use.startswith("R") for use in uses) else "")
            if rules:
                drop += (" and " if drop else "") + f"switch {', '.join(rules)} off (`mode: off`) or point the rule at " \
                        "another field"
            uses = sorted(uses, key=lambda use: use.startswith("R"))  # stages first, then rules
            doc.problem(("fields",), f'regulated field "{field_id}" is used by the regulation but not bound '
                                     f"({'; '.join(uses)})",
                        f"bind it: add `{field_id}: {field_example}` under fields: — or, in regulation.yaml, {drop}",
                        key=True)
    if amocrm and data.get("probability_field") is None and any(
            regulation.rules_for(direction).R4.mode.value != "off" for direction in directions):
        doc.problem(("crm",), "R4 checks each deal's probability, but amoCRM leads have none of their own",
                    "bind the numeric lead field that holds it as `probability_field: <field id>`, "
                    "or set R4 `mode: off` in regulation.yaml")
    if amocrm and str(data.get("probability_field")).lower() == TODO:
        doc.problem(("probability_field",), "the probability field is still todo",
                    "write the id of the numeric lead field that holds the probability (R4), or remove the line")
    for name, team in _dict(data.get("teams")).items():
        for index, direction_id in enumerate(_list(_dict(team).get("directions"))):
            if isinstance(direction_id, str) and direction_id not in directions:
                doc.problem(("teams", name, "directions", index), f'unknown direction "{direction_id}"',
                            did_you_mean(direction_id, directions))
    for number, head in enumerate(_list(data.get("heads"))):
        for index, direction_id in enumerate(_list(_dict(head).get("directions"))):
            if isinstance(direction_id, str) and direction_id not in directions:
                doc.problem(("heads", number, "directions", index), f'unknown direction "{direction_id}"',
                            did_you_mean(direction_id, directions))


def needed_fields(regulation: RegulationSpec, directions: Iterable[Any] | None = None) -> dict[str, list[str]]:
    """Regulated fields the regulation reads (stage requirements and enabled rules) in the given directions (all
    when None), each with where it is used: "project_sales «Позиционирование» (to enter)", "R8 paid_field"."""
    wanted = None if directions is None else {direction for direction in directions if isinstance(direction, str)}
    uses: dict[str, list[str]] = {}

    def add(field_id: str, where: str) -> None:
        if field_id in regulation.fields and where not in uses.setdefault(field_id, []):
            uses[field_id].append(where)

    for direction_id, direction in regulation.directions.items():
        if wanted is not None and direction_id not in wanted:
            continue
        for stage in direction.stages:
            for requirement in stage.requires_to_enter:
                add(requirement.field, f"{direction_id} «{stage.name}» (to enter)")
            for requirement in stage.requires_to_leave:
                add(requirement.field, f"{direction_id} «{stage.name}» (to leave)")
        for final, words in ((direction.won, "won"), (direction.lost, "lost")):
            for requirement in final.requires:
                add(requirement.field, f"{direction_id} {words}")
        rules = regulation.rules_for(direction_id)
        for rule_id, params in _RULE_FIELD_PARAMS.items():
            spec = getattr(rules, rule_id)
            if spec.mode.value != "off":
                for param in params:
                    add(getattr(spec, param), f"{rule_id} {param}")
    return uses


# ---------------------------------------------------------------- public API


def parse_regulation(text: str, file: str = REGULATION_FILE) -> tuple[RegulationSpec | None, list[Problem]]:
    """Parse and lint regulation text; returns the model (None if invalid) and every problem found."""
    doc = read_yaml(text, file)
    model = _validate(doc, RegulationSpec)
    if doc.data is not None:
        _lint_regulation(doc)
    problems = sorted(set(doc.problems))
    return (model if not problems else None), problems  # type: ignore[return-value]


def binding_crm(data: Any, file: str) -> str:
    """Which CRM a binding is for: its `crm:` key, else its file name (amocrm*.yaml), else Bitrix24."""
    if isinstance(data, dict) and isinstance(data.get("crm"), str):
        return data["crm"]
    return "amocrm" if FsPath(file).name.startswith("amocrm") else "bitrix24"


def parse_binding(text: str, regulation: RegulationSpec | None, file: str = BINDING_FILE, *,
                  crm: str | None = None) -> tuple[AnyBinding | None, list[Problem]]:
    """Parse and lint binding text against a (valid) regulation; `crm`, when given, is the CRM it must bind."""
    doc = read_yaml(text, file)
    found = binding_crm(doc.data, file)
    if crm is not None and found != crm and isinstance(doc.data, dict) and "crm" in doc.data:
        doc.problem(("crm",), f'this file binds {CRM_NAMES.get(found, found)}, but CRMBRIDGE_CRM is {crm}',
                    f"use {binding_file(crm)} for {CRM_NAMES.get(crm, crm)}, or set CRMBRIDGE_CRM={found}")
        return None, sorted(set(doc.problems))
    model_class: type[BaseModel] = AmoCRMBindingSpec if (crm or found) == "amocrm" else BindingSpec
    if model_class is AmoCRMBindingSpec and isinstance(doc.data, dict) and "crm" not in doc.data:
        doc.data = {"crm": "amocrm", **doc.data}
    model = _validate(doc, model_class)
    if doc.data is not None:
        _lint_binding(doc, regulation, crm or found)
    problems = sorted(set(doc.problems))
    return (model if not problems else None), problems  # type: ignore[return-value]


def load_regulation(path: str | FsPath) -> RegulationSpec:
    """Load one regulation file or raise MappingError with all its problems."""
    path = FsPath(path)
    model, problems = parse_regulation(_read(path), str(path))
    if problems or model is None:
        raise MappingError([str(problem) for problem in problems] or [f"{path}:1:1: cannot be loaded"])
    return model


def load_mappings(directory: str | FsPath = "mappings", *, binding_file: str | None = None,
                  crm: str | None = None) -> Mappings:
    """Load `regulation.yaml` and the CRM's binding (`bitrix24.yaml`, `amocrm.yaml`) from a directory;
    MappingError lists the problems of both files. `crm` (CRMBRIDGE_CRM) picks the file and must match it."""
    directory = FsPath(directory)
    binding_path = directory / (binding_file or BINDING_FILES.get(crm or "bitrix24", f"{crm}.yaml"))
    draft = binding_path.with_name(binding_path.name.replace(".yaml", ".draft.yaml"))
    if not binding_path.exists() and draft.exists():
        # `crmbridge discover` wrote a draft and the admin has not adopted it yet
        raise MappingError([f"{binding_path}:1:1: file not found — `crmbridge discover` wrote {draft.name} next to "
                            f"it: settle its `todo` decisions and rename it to {binding_path.name}"])
    binding_text = _read(binding_path)
    regulation_name = REGULATION_FILE
    probe = read_yaml(binding_text, str(binding_path))
    if isinstance(probe.data, dict) and isinstance(probe.data.get("regulation"), str):
        regulation_name = probe.data["regulation"]
    regulation_path = directory / regulation_name
    regulation, problems = parse_regulation(_read(regulation_path), str(regulation_path))
    binding, binding_problems = parse_binding(binding_text, regulation, str(binding_path), crm=crm)
    problems = problems + binding_problems
    if problems or regulation is None or binding is None:
        raise MappingError([str(problem) for problem in problems] or [f"{binding_path}:1:1: cannot be loaded"])
    return Mappings(regulation, binding, str(regulation_path), str(binding_path))


def read_text(path: FsPath) -> str:
    """An admin's file as text; a missing, unreadable or non-UTF-8 file is a MappingError naming it."""
    return _read(path)


def _read(path: FsPath) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError([f"{path}:1:1: file not found — run `crmbridge discover` or copy the shipped example"]) from None
    except UnicodeDecodeError as bad:
        raise MappingError([f"{path}:1:1: not UTF-8 text ({bad.reason}) — save the file as UTF-8"]) from None
    except OSError as bad:
        raise MappingError([f"{path}:1:1: cannot be read ({bad.strerror}) — check the path and permissions"]) from None
