"""Draft a Bitrix24 binding from the portal: CRM labels as comments, matches by name, `todo` where unsure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Iterable

from crmbridge.mapping.load import needed_fields
from crmbridge.mapping.portal import (
    BOOLEAN_TYPES,
    BOOLEAN_VALUES,
    COMPATIBLE,
    GUESS_NOTE,
    PortalField,
    PortalSnapshot,
    users_by_department,
)
from crmbridge.mapping.schema import BINDING_SCHEMA_FILES, LOST, WON, RegulationSpec

TODO = "todo"
#: standard deal fields a regulated field may live in (they are not in crm.deal.userfield.list): type, label and
#: the other names people give them
STANDARD_FIELDS = {
    "OPPORTUNITY": ("double", "Сумма", ("Сумма сделки", "Amount", "Opportunity")),
    "TITLE": ("string", "Название сделки", ("Название", "Title")),
    "COMMENTS": ("string", "Комментарий", ("Comments",)),
    "BEGINDATE": ("date", "Дата начала", ("Start date",)),
    "CLOSEDATE": ("date", "Предполагаемая дата закрытия", ("Дата закрытия", "Close date")),
}
#: amoCRM lead fields that are not custom fields
AMOCRM_STANDARD_FIELDS = {"price": ("numeric", "Бюджет", ("Сумма сделки", "Сумма", "Price")),
                          "name": ("text", "Название сделки", ("Название", "Name"))}
WEAK = 0.6  # similarity of two names (casefolded) worth suggesting; only a strong match is written without `todo`
_WORDS = re.compile(r"\w+")  # "Вероятность, %" is "Вероятность": signs and units are not words
_YES = {"yes", "да", "true", "есть", "y"}
_NO = {"no", "нет", "false", "n"}


@dataclass(frozen=True)
class Match:
    """The best candidate for a name: `strong` when the names are the same (or one is a whole phrase of the other),
    a suggestion only when merely similar."""

    id: str | None
    label: str = ""
    strong: bool = False


_BRACKETS = re.compile(r"\([^()]*\)")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.casefold().replace("ё", "е"))


def _stems(words: list[str]) -> set[str]:
    return {word[:5] for word in words}  # «проектные» and «проектов» are one word to a reader of Russian


def _strength(name: str, label: str) -> tuple[bool, float]:
    left, right = _words(name), _words(label)
    if not left or not right:
        return False, 0.0
    if left == right:
        return True, 1.0
    # «Предложение (ТКП)» is «Предложение»: a bracketed note does not make another name
    bare_left, bare_right = _words(_BRACKETS.sub(" ", name)), _words(_BRACKETS.sub(" ", label))
    if bare_left and bare_left == bare_right:
        return True, 0.95
    shorter, longer = (left, right) if len(left) <= len(right) else (right, left)
    contained = any(longer[i:i + len(shorter)] == shorter for i in range(len(longer) - len(shorter) + 1))
    if contained:
        # "Дата подписания" in "Дата подписания договора" names the same thing; "Сумма" in "Сумма КП" may not
        return len(shorter) >= 2, 0.9
    ratio = SequenceMatcher(None, " ".join(left), " ".join(right)).ratio()
    stems_left, stems_right = _stems(left), _stems(right)
    overlap = len(stems_left & stems_right) / len(stems_left | stems_right)
    return False, min(max(ratio, overlap), 0.89)  # similar is never the same


def _match(name: str, candidates: Iterable[tuple[str, Iterable[str]]]) -> Match:
    """The candidate (id, its labels) most like `name`; strong only when it is unambiguous."""
    scored: list[tuple[bool, float, str, str]] = []
    for candidate, labels in candidates:
        labels = list(labels)
        best = max(((*_strength(name, label), label) for label in labels), default=(False, 0.0, ""))
        scored.append((best[0], best[1], candidate, best[2] if best[2] else (labels[0] if labels else "")))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    if not scored or (not scored[0][0] and scored[0][1] < WEAK):
        return Match(None)
    strong, score, candidate, label = scored[0]
    # two equally good candidates: the admin decides
    ambiguous = len(scored) > 1 and (scored[1][0], scored[1][1]) == (strong, score)
    return Match(candidate, label, strong and not ambiguous)


def _quote(text: str) -> str:
    """A CRM label for a YAML comment: one line (a line break would end the comment and start YAML)."""
    return " ".join(text.split())


def _scalar(text: str) -> str:
    """A CRM name as a YAML value: a JSON string is a valid YAML double-quoted scalar, so quotes, backslashes and
    colons in the name stay data («B2B "VIP"» broke the draft)."""
    return json.dumps(_quote(text), ensure_ascii=False)


def draft_binding(regulation: RegulationSpec, snapshot: PortalSnapshot, *, regulation_file: str = "regulation.yaml",
                  crm: str = "bitrix24") -> str:
    """The text of a draft `bitrix24.yaml` / `amocrm.yaml` for this account; `crmbridge check` lists what is left `todo`.

    Nothing is bound on a mere similarity: a guess is written as `todo` with the suggestion in a comment. Portal
    fields left unbound are listed at the end with their labels and types.
    """
    amocrm = crm == "amocrm"
    lines = [
        f"# yaml-language-server: $schema=./{BINDING_SCHEMA_FILES[crm]}",
        "# Draft written by `crmbridge discover`: CRM labels are in comments; every `todo` needs a decision,",
        "# then rename this file to " + ("amocrm.yaml" if amocrm else "bitrix24.yaml") + " and run `crmbridge check --live`.",
        f"crm: {crm}",
        f"regulation: {regulation_file}",
        "",
        "pipelines:",
    ]
    directions = [(direction_id, (direction.name, direction_id)) for direction_id, direction in regulation.directions.items()]
    todo_count = 0
    bound_directions: set[str] = set()
    for category, name in snapshot.pipelines.items():
        found = _match(name, directions)
        lines.append(f"  {category}:")
        lines.append(f"    name: {_scalar(name)}")
        options = ", ".join(direction for direction, _ in directions)
        if not found.strong:
            todo_count += 1
            hint = f"looks like {found.id}? " if found.id else ""
            lines.append(f"    direction: {TODO}  # {hint}one of: {options}, ignore")
        else:
            bound_directions.add(found.id)  # type: ignore[arg-type]
            lines.append(f"    direction: {found.id}")
        lines.append("    stages:")
        # under a pipeline only like a direction, that direction's stages are suggested, never bound
        direction = regulation.directions.get(found.id) if found.id else None
        stage_choices = [(stage.id, (stage.name, stage.id)) for stage in direction.stages] if direction else []
        for crm_stage, (stage_name, semantics) in snapshot.stages.get(category, {}).items():
            mark = f" ({semantics})" if semantics in ("S", "F") else ""
            if semantics == "S":
                target, note = WON, ""
            elif semantics == "F":
                target, note = LOST, ""
            else:
                stage = _match(stage_name, stage_choices) if stage_choices else Match(None)
                sure = stage.strong and found.strong
                target = stage.id if sure else TODO
                note = GUESS_NOTE.format(stage.id) if stage.id and not sure else ""
            if target == TODO:
                todo_count += 1
            lines.append(f"      {crm_stage}: {target}  # {_quote(stage_name)}{mark}{note}")
    lines += ["", "fields:"]
    standard = AMOCRM_STANDARD_FIELDS if amocrm else STANDARD_FIELDS
    portal: dict[str, PortalField] = dict(snapshot.fields)
    aliases: dict[str, tuple[str, ...]] = {}
    for name, (kind, label, other_names) in standard.items():
        if name not in portal:
            portal[name] = PortalField(name, kind, label)
            aliases[name] = other_names
    needed = needed_fields(regulation, bound_directions)
    used: set[str] = set()
    for field_id, spec in regulation.fields.items():
        if spec.type in ("phone", "email"):
            continue
        label = spec.label or field_id
        fitting = [(name, (field.label, *aliases.get(name, ()))) for name, field in portal.items()
                   if name not in used and (not field.type or field.type in COMPATIBLE.get(spec.type, {field.type}))]
        found = _match(label, fitting)
        if not found.strong:
            hint = f" — looks like {found.id} «{_quote(found.label)}»?" if found.id else ""
            if field_id not in needed:
                # no pipeline is bound to a direction that reads it: nothing to decide now
                lines.append(f"  # {field_id}: (not needed yet: no bound direction reads «{_quote(label)}»){hint}")
                continue
            todo_count += 1
            placeholder = TODO if amocrm else f"{TODO.upper()}_CRM_FIELD"
            lines.append(f"  {field_id}: {placeholder}  # todo: the CRM field for «{_quote(label)}»{hint}")
            continue
        crm_field = found.id
        assert crm_field is not None
        used.add(crm_field)
        portal_field = portal[crm_field]
        if spec.type == "enum":
            lines.append(f"  {field_id}:  # {_quote(portal_field.label)}")
            lines.append(f"    crm_field: {crm_field}")
            lines.append("    options:")
            if portal_field.type in BOOLEAN_TYPES:
                ordered = [(value, "да" if value == "1" else "нет") for value in BOOLEAN_VALUES]
                yes = next((option for option in spec.options if option.casefold() in _YES), None)
                no = next((option for option in spec.options if option.casefold() in _NO), None)
                guesses = {"1": yes or TODO, "0": no or TODO}
                for value, word in ordered:
                    todo_count += guesses[value] == TODO
                    lines.append(f'      "{value}": {guesses[value]}  # {word}')
                continue
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
        numeric = [(name, (field.label,)) for name, field in snapshot.fields.items() if field.type in COMPATIBLE["number"]]
        probability = next((match for match in (_match("Вероятность", numeric), _match("Probability", numeric))
                            if match.strong), Match(None))
        lines += ["", "# amoCRM leads have no probability of their own: R4 reads and sets this numeric custom field."]
        if probability.id is None:
            todo_count += 1
            lines.append("probability_field: todo  # todo: a numeric lead field for the probability, or remove this line")
        else:
            used.add(probability.id)
            lines.append(f"probability_field: {probability.id}  # {_quote(snapshot.fields[probability.id].label)}")
    unbound = [(name, field) for name, field in snapshot.fields.items() if name not in used]
    if unbound:
        lines += ["", "# Portal fields not bound above (field: «label», type) — bind any a regulated field lives in:"]
        lines += [f"#   {name}: «{_quote(field.label)}», {field.type or '?'}" for name, field in unbound]
    team_word = "users group" if amocrm else "department"
    prefix = "group" if amocrm else "department"
    lines += ["", f"# Round robin for R7: one team per {team_word} of two or more active users; restrict `directions`"
                  " as needed.", "teams:"]
    alone: list[str] = []
    for department, members in sorted(users_by_department(snapshot).items()):
        names = ", ".join(snapshot.users[user][0] for user in members)
        key = f"{prefix}_{department}" if department != "?" else f"no_{prefix}"
        if len(members) < 2:
            alone.append(f"#   {key}: {_quote(names)} (a round robin of one hands every lead back to the same person)")
            continue
        lines.append(f"  {key}:")
        lines.append(f"    members: [{', '.join(members)}]  # {_quote(names)}")
    if len(lines) and lines[-1] == "teams:":
        lines[-1] = "teams: {}"
    if alone:
        lines += [f"# Not teams: a {team_word} of one active user"] + alone
    heads = [(user, department) for department, user in snapshot.heads.items()
             if user in snapshot.users and snapshot.users[user][1]]
    lines += ["", "# Heads to notify about violations (R7 reassignments, R9 overdue payments, ...): "
                  + ("the heads of the portal's departments; keep those who should hear." if heads else
                     "the first active user for now; keep the users who should hear."),
              "heads:"]
    active = [(user, name) for user, (name, is_active, _) in snapshot.users.items() if is_active]
    if heads:
        headed: dict[str, list[str]] = {}
        for user, department in heads:
            headed.setdefault(user, []).append(f"«{_quote(snapshot.departments.get(department, department))}»")
        for user in sorted(headed, key=lambda user: int(user) if user.isdigit() else 0):
            lines.append(f"  - user: {user}  # {_quote(snapshot.users[user][0])}, head of {', '.join(headed[user])}")
    else:
        for user, name in active[:1]:
            lines.append(f"  - user: {user}  # {_quote(name)}")
    lines.append("")
    lines.insert(3, f"# {todo_count} decisions left (`todo`).")
    return "\n".join(lines)


def todo_left(draft: str) -> int:
    """How many decisions a draft still leaves to the admin."""
    first = next((line for line in draft.splitlines() if line.endswith("decisions left (`todo`).")), "# 0")
    return int(first.split()[1])
