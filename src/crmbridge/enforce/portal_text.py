"""What the planner writes to the portal is BB-code: text from the CRM in it (a deal title, a client's or a
user's name) is made literal first, so `[url=…]` in a title stays the text it is and never becomes a link."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from crmbridge.model import Deal, Violation
from crmbridge.text import bb_safe


def literal_deal(deal: Deal) -> Deal:
    return replace(deal, title=bb_safe(deal.title)) if "[" in deal.title or "]" in deal.title else deal


def literal_violations(violations: Sequence[Violation]) -> Sequence[Violation]:
    """The violations with their message values literal (the regulation's own template keeps its BB-code)."""
    if not any(isinstance(value, str) and ("[" in value or "]" in value) for violation in violations
               for value in violation.values.values()):
        return violations
    return [replace(violation, values={key: bb_safe(value) for key, value in violation.values.items()})
            for violation in violations]


def literal_names(names: Mapping[str, str]) -> Mapping[str, str]:
    if not any("[" in name or "]" in name for name in names.values()):
        return names
    return {user: bb_safe(name) for user, name in names.items()}
