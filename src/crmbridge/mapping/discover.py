"""Draft a Bitrix24 binding from the portal: CRM labels as comments, matches by name, `todo` where unsure."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Iterable

from crmbridge.mapping.portal import COMPATIBLE, PortalField, PortalSnapshot, users_by_department
from crmbridge.mapping.schema import BINDING_SCHEMA_FILES, LOST, WON, RegulationSpec

TODO = "todo"
#: standard deal fields a regulated field may live in (they are not in crm.deal.userfield.list)
STANDARD_FIELDS = {
    "OPPORTUNITY": ("double", "Сумма"), "TITLE": ("string", "Название сделки"), "COMMENTS": ("string", "Комментарий"),
    "BEGINDATE": ("date", "Дата начала"), "CLOSEDATE": ("date", "Предполагаемая дата закрытия"),
}
#: amoCRM lead fields that are not custom fields
AMOCRM_STANDARD_FIELDS = {"price": ("numeric", "Бюджет"), "name": ("text", "Название сделки")}
MATCH = 0.6  # similarity of two names (casefolded) to take a match without asking


def _similarity(left: str, right: str) -> float:
    left, right = left.casefold().strip(), right.casefold().strip()
    if not left or not right:
        return 0.0
    if left == right:
        return 1.0
    if left in right or right in left:
        return 0.9
    return SequenceMatcher(None, left, right).ratio()


def _best(name: str, candidates: Iterable[tuple[str, str]]) -> tuple[str | None, float]:
    """The candidate id whose label is most like `name`."""
    best, score = None, 0.0
    for candidate, label in candidates:
        similarity = _similarity(name, label)
        if similarity > score:
            best, score = candidate, similarity
    return (best, score) if score >= MATCH else (None, score)


def _quote(text: str) -> str:
    return text.replace("\n", " ").strip()


def draft_binding(regulation: RegulationSpec, snapshot: PortalSnapshot, *, regulation_file: str = "regulation.yaml",
                  crm: str = "bitrix24") -> str:
    """The text of a draft `bitrix24.yaml` / `amocrm.yaml` for this account; `crmbridge check` lists what is left `todo`."""
    amocrm = crm == "amocrm"
    lines = [
        f"# yaml-language-server: $schema=./{BINDING_SCHEMA_FILES[crm]}",
        "# Draft written by `crmbridge discover`: CRM labels are in comments; every `todo` needs a decision,",
        "# then run `crmbridge check --live`.",
        f"crm: {crm}",
        f"regulation: {regulation_file}",
        "",
        "pipelines:",
    ]
    directions = [(direction_id, direction.name) for direction_id, direction in regulation.directions.items()]
    todo_count = 0
    for category, name in snapshot.pipelines.items():
        direction_id, _ = _best(name, directions)
        lines.append(f"  {category}:")
        lines.append(f'    name: "{_quote(name)}"')
        if direction_id is None:
            todo_count += 1
            options = ", ".join(direction for direction, _ in directions)
            lines.append(f"    direction: {TODO}  # one of: {options}, ignore")
        else:
            lines.append(f"    direction: {direction_id}")
        lines.append("    stages:")
        direction = regulation.directions.get(direction_id) if direction_id else None
        stage_choices = [(stage.id, stage.name) for stage in direction.stages] if direction else []
        for crm_stage, (stage_name, semantics) in snapshot.stages.get(category, {}).items():
            if semantics == "S":
                target = WON
            elif semantics == "F":
                target = LOST
            else:
                target = _best(stage_name, stage_choices)[0] if stage_choices else None
            if target is None:
                todo_count += 1
                target = TODO
            lines.append(f"      {crm_stage}: {target}  # {_quote(stage_name)}" + (f" ({semantics})" if semantics in "SF" else ""))
    lines += ["", "fields:"]
    custom = [(name, field) for name, field in snapshot.fields.items()]
    standard = AMOCRM_STANDARD_FIELDS if amocrm else STANDARD_FIELDS
    custom += [(name, PortalField(name, kind, label)) for name, (kind, label) in standard.items()
               if name not in snapshot.fields]
    known = dict(custom)
    for field_id, spec in regulation.fields.items():
        if spec.type in ("phone", "email"):
            continue
        label = spec.label or field_id
        fitting = [(name, field.label) for name, field in custom if not field.type or field.type in COMPATIBLE.get(spec.type, {field.type})]
        crm_field, _ = _best(label, fitting)
        if crm_field is None:
            todo_count += 1
            placeholder = TODO if amocrm else f"{TODO.upper()}_CRM_FIELD"
            lines.append(f"  {field_id}: {placeholder}  # todo: the CRM field for «{_quote(label)}»")
            continue
        portal_field = known[crm_field]
        if spec.type == "enum":
            lines.append(f"  {field_id}:  # {_quote(portal_field.label)}")
            lines.append(f"    crm_field: {crm_field}")
            lines.append("    options:")
            ordered = list(portal_field.options.items())
            for index, (option_id, option_label) in enumerate(ordered):
                guess = spec.options[index] if len(ordered) == len(spec.options) else TODO
                if guess == TODO:
                    todo_count += 1
                lines.append(f'      "{option_id}": {guess}  # {_quote(option_label)}' + (" — check the order" if guess != TODO else ""))
        else:
            lines.append(f"  {field_id}: {crm_field}  # {_quote(portal_field.label)}")
    if amocrm:
        # amoCRM leads have no probability: R4 needs a numeric custom field that holds it
        numeric = [(name, field.label) for name, field in snapshot.fields.items() if field.type in COMPATIBLE["number"]]
        probability, _ = _best("Вероятность", numeric)
        if probability is None:
            probability, _ = _best("Probability", numeric)
        lines += ["", "# amoCRM leads have no probability of their own: R4 reads and sets this numeric custom field."]
        if probability is None:
            todo_count += 1
            lines.append("probability_field: todo  # todo: a numeric lead field for the probability, or remove this line")
        else:
            lines.append(f"probability_field: {probability}  # {_quote(snapshot.fields[probability].label)}")
    team_word = "users group" if amocrm else "department"
    lines += ["", f"# Round robin for R7: one team per {team_word} of active users; restrict `directions` as needed.",
              "teams:"]
    for department, members in sorted(users_by_department(snapshot).items()):
        names = ", ".join(snapshot.users[user][0] for user in members)
        prefix = "group" if amocrm else "department"
        lines.append(f"  {prefix}_{department}:" if department != "?" else f"  no_{prefix}:")
        lines.append(f"    members: [{', '.join(members)}]  # {_quote(names)}")
    lines += ["", "# Heads to notify: keep the users who should hear about violations (the first active user for now).",
              "heads:"]
    active = [(user, name) for user, (name, is_active, _) in snapshot.users.items() if is_active]
    for user, name in active[:1]:
        lines.append(f"  - user: {user}  # {_quote(name)}")
    lines.append("")
    lines.insert(3, f"# {todo_count} decisions left (`todo`).")
    return "\n".join(lines)


def todo_left(draft: str) -> int:
    """How many decisions a draft still leaves to the admin."""
    first = next((line for line in draft.splitlines() if line.endswith("decisions left (`todo`).")), "# 0")
    return int(first.split()[1])
