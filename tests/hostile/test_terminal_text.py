"""Text from the CRM is data, never markup: rich markup, terminal control sequences and BB-code in titles,
user names and error texts are shown as the text they are, on every output path, and never reach the portal
as BB-code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from crmbridge.sandbox.proxy import answer_with, rows_of

from .conftest import World

pytestmark = [pytest.mark.integration, pytest.mark.hostile("markup")]

MARKUP_TITLES = ["[/b] closes nothing", "[/bold] and [bold red]colour", "[link=https://evil.example]click[/link]",
                 "[/]", "[b]bold[/b] [i]x", "Акме [/yellow]"]
#: one title of control sequences: clear screen, window title (OSC 0), an OSC 8 link, BEL, NUL, C1 CSI, bidi override
CONTROL_TITLE = ("\x1b[2J\x1b[H cleared \x1b]0;pwned\x07 \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\ "
                 "bell\x07 nul\x00 csi\x9b31m red \u202eevil\u202c end")
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

COMMANDS: list[tuple[str, ...]] = [
    ("audit",), ("audit", "--json"), ("audit", "--deal", "{deal}"), ("audit", "--deal", "{deal}", "--json"),
    ("enforce", "--dry-run"), ("enforce", "--dry-run", "--json"), ("enforce",), ("log",), ("log", "--json"),
]


def planted_deal(world: World) -> int:
    """A deal the seed made break the regulation: its title reaches messages, plans and the audit log."""
    return min(deal_id for deal_id, planted in world.portal.state.planted.items() if planted)


def run_all(world: World, deal: int) -> list[tuple[tuple[str, ...], Any]]:
    results = []
    for command in COMMANDS:
        args = tuple(part.format(deal=deal) for part in command)
        results.append((args, world.run(*args)))
    return results


def assert_shown_as_text(results: list[tuple[tuple[str, ...], Any]]) -> None:
    for args, result in results:
        assert not result.crashed, f"{' '.join(args)}: {result.err}"
        assert result.code in (0, 1), f"{' '.join(args)}: {result.err}"
        found = RAW_CONTROLS.search(result.out + result.err)
        assert found is None, f"{' '.join(args)} printed a raw control character {found.group()!r}"


@pytest.mark.parametrize("title", MARKUP_TITLES)
def test_markup_in_a_deal_title_is_shown_as_text(make_world: Callable[..., World], title: str) -> None:
    world = make_world(deals=40, seed=11)
    deal = planted_deal(world)
    world.portal.update_deal(deal, {"TITLE": title})
    assert world.sync().code == 0
    results = run_all(world, deal)
    assert_shown_as_text(results)
    explained = dict(results)[("audit", "--deal", str(deal))]
    assert title in " ".join(explained.out.split()), explained.out


@pytest.mark.parametrize("name", ["[/b]", "[bold]Boss[/bold]", "Иван [/]"])
def test_markup_in_a_user_name_is_shown_as_text(make_world: Callable[..., World], name: str) -> None:
    world = make_world(deals=40, seed=11)
    world.proxy.add(rows_of("user.get", lambda row: {**row, "NAME": name}))
    assert world.sync().code == 0
    results = run_all(world, planted_deal(world))
    assert_shown_as_text(results)
    audit = dict(results)[("audit",)]
    assert name in audit.out, audit.out


def test_control_sequences_in_a_title_never_reach_the_terminal(make_world: Callable[..., World]) -> None:
    world = make_world(deals=40, seed=11)
    deal = planted_deal(world)
    world.portal.update_deal(deal, {"TITLE": CONTROL_TITLE})
    world.proxy.add(rows_of("user.get", lambda row: {**row, "LAST_NAME": "\x1b[31mred\x1b[0m\x07"}))
    assert world.sync().code == 0
    results = run_all(world, deal)
    assert_shown_as_text(results)
    explained = dict(results)[("audit", "--deal", str(deal), "--json")]
    assert json.loads(explained.out)["title"] == CONTROL_TITLE  # JSON keeps the exact text, escaped


@pytest.mark.parametrize("description", ["\x1b]0;pwned\x07 [bold]boom[/bold]", "<b>bold</b> &#27;[2J", "\x9b2J\x00"])
def test_a_portal_error_text_is_printed_as_text(make_world: Callable[..., World], description: str) -> None:
    world = make_world(deals=10)
    # a direct call every full sync makes (the scopes are read inside a batch)
    world.proxy.add(answer_with("crm.category.list", 400, {"error": "WEIRD\x1b[2J", "error_description": description}))
    result = world.sync()
    assert result.code == 1
    line = result.one_line()
    assert RAW_CONTROLS.search(result.err) is None, repr(line)


BB_TITLE = "[/url][url=https://evil.example]pay here[/url][b]"


def test_a_title_never_becomes_bb_code_on_the_portal(make_world: Callable[..., World]) -> None:
    world = make_world(deals=40, seed=11)
    for deal in world.portal.state.planted:
        world.portal.update_deal(deal, {"TITLE": BB_TITLE})
    world.proxy.add(rows_of("user.get", lambda row: {**row, "NAME": "[url=https://evil.example]boss[/url]"}))
    assert world.sync().code == 0
    result = world.run("enforce", "--mode", "R1=enforce", "--mode", "R2=enforce", "--mode", "R3=enforce")
    assert not result.crashed, result.err
    state = world.portal.state
    with state.lock:
        texts = [n["MESSAGE"] for n in state.notifications]
        texts += [c["COMMENT"] for c in state.comments.rows.values()]
        texts += [t.get("description") or "" for t in state.tasks.rows.values()]
        texts += [a.get("DESCRIPTION") or "" for a in state.activities.rows.values()]
    assert texts, "enforcement wrote nothing to check"
    leaked = [text for text in texts if "[url=https://evil.example]" in text.lower()]
    assert not leaked, leaked[:3]


KPI_COMMANDS: list[tuple[str, ...]] = [("kpi",), ("kpi", "--period", "{month}"), ("kpi", "snapshot"),
                                       ("payout", "--period", "{month}"), ("plans", "check")]


@pytest.mark.parametrize("name", ["[/b]", "[bold]Boss[/bold] [/]", "\x1b]0;pwned\x07 Иван \x9b31m"])
def test_names_in_kpi_tables_and_payouts_are_text(make_world: Callable[..., World], name: str) -> None:
    """The KPI tables, payouts and plan checks print managers' and departments' names from the portal."""
    world = make_world(deals=60, seed=11)
    world.proxy.add(rows_of("user.get", lambda row: {**row, "NAME": name}),
                    rows_of("department.get", lambda row: {**row, "NAME": name}))
    assert world.sync().code == 0
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    for command in KPI_COMMANDS:
        args = tuple(part.format(month=month) for part in command)
        result = world.run(*args)
        assert not result.crashed, f"{' '.join(args)}: {result.err}"
        assert result.code in (0, 1, 2), f"{' '.join(args)}: {result.err}"
        assert "Traceback" not in result.err, f"{' '.join(args)}: {result.err}"
        found = RAW_CONTROLS.search(result.out + result.err)
        assert found is None, f"{' '.join(args)} printed a raw control character {found.group()!r}"
    shown = world.run("kpi", "--period", month)
    assert shown.code == 0, shown.err
    if "\x1b" not in name:
        assert name in " ".join(shown.out.split()), shown.out


def test_webhook_text_in_the_inbox_is_shown_as_text(make_world: Callable[..., World]) -> None:
    """Whoever can post to the webhook chooses the event name, ids and what a rejected body says."""
    from crmbridge.live.inbox import Inbox, InboxEvent

    world = make_world(deals=5)
    assert world.sync().code == 0
    with Inbox(world.cache_path) as box:
        box.accept([InboxEvent("bitrix24.webhook", "ONCRMDEALUPDATE\x1b]0;pwned\x07[/b]", "deal", "7\x1b[2J\x9b31m",
                               "{}")])
        box.reject("bitrix24.webhook", "unknown event \x1b[2J[/bold] \u202eevil", b"\x1b]8;;https://evil.example\x1b\\")
    for args in (("inbox",), ("inbox", "--dead"), ("inbox", "--json"), ("inbox", "--dead", "--json")):
        result = world.run(*args)
        assert not result.crashed, f"{' '.join(args)}: {result.err}"
        assert result.code == 0, f"{' '.join(args)}: {result.err}"
        found = RAW_CONTROLS.search(result.out + result.err)
        assert found is None, f"{' '.join(args)} printed a raw control character {found.group()!r}"
