"""Composing messages (pure): one digest per person, working hours, the daily cap, individual rules, the summary."""

from __future__ import annotations

from regulation_kit import COMPILED, SPEC, at

from crmbridge.enforce.digest import Delivery, Notice, SummaryFacts, bb_text, compose
from crmbridge.enforce.plan import ActionKind
from crmbridge.regulation.compiled import compile_regulation

WEDNESDAY_NOON, WEDNESDAY_NIGHT = at("2026-11-18 12:00"), at("2026-11-18 21:00")


def notice(key: str, user: str = "3", rule: str = "R3", deal: str = "7", form: str = "digest") -> Notice:
    return Notice(key, user, deal, f"Deal {deal}", rule, f"{rule}: something about deal {deal}", f"{rule} clause",
                  "Fix it" if rule == "R3" else "", form, "|escalate:" in key)


def delivery(**changes: object) -> Delivery:
    values = {"regulation": COMPILED, "now": WEDNESDAY_NOON, "portal_url": "https://b24.example", **changes}
    return Delivery(**values)  # type: ignore[arg-type]


def test_each_person_gets_one_digest_grouped_by_rule_with_clause_remedy_and_links() -> None:
    notices = [notice("a", rule="R3", deal="7"), notice("b", rule="R1", deal="8"), notice("c", rule="R3", deal="9"),
               notice("d", user="4", rule="R11", deal="10")]
    result = compose(notices, delivery())
    assert [(m.recipient, m.kind, set(m.items)) for m in result.messages] == [
        ("3", ActionKind.MESSAGE, {"a", "b", "c"}), ("4", ActionKind.MESSAGE, {"d"})]
    text = result.messages[0].params["MESSAGE"]
    assert text.index("[b]R1 clause[/b]") < text.index("[b]R3 clause[/b]")  # grouped, in rule order
    assert "Что сделать: Fix it" not in text and "What to do: Fix it" in text  # the regulation's language (en)
    assert "[url=https://b24.example/crm/deal/details/9/]Deal 9[/url]" in text
    assert text.endswith(result.messages[0].marker) and result.messages[0].params["DIALOG_ID"] == "3"
    again = compose(list(reversed(notices)), delivery())
    assert [m.idempotency_key for m in again.messages] == [m.idempotency_key for m in result.messages]


def test_outside_working_hours_nothing_goes_and_everything_waits() -> None:
    result = compose([notice("a"), notice("b", user="4")], delivery(now=WEDNESDAY_NIGHT))
    assert result.messages == [] and result.held == {"working_hours": 2}
    always = SPEC.model_validate({**SPEC.model_dump(), "notifications": {"outside_working_hours": "send"}})
    assert len(compose([notice("a")], delivery(now=WEDNESDAY_NIGHT, regulation=compile_regulation(always))).messages) == 1


def test_the_daily_cap_counts_what_a_person_already_got_today() -> None:
    capped = compose([notice("a"), notice("b", user="4")], delivery(sent_today={"3": 6}))
    assert [m.recipient for m in capped.messages] == ["4"] and capped.held == {"daily_cap": 1}


def test_an_individual_rule_gets_a_message_per_notice_and_a_run_about_few_deals_sends_only_those() -> None:
    notices = [notice("a", rule="R7", form="individual"), notice("b", rule="R7", deal="8", form="individual"),
               notice("c")]
    assert sorted(len(m.items) for m in compose(notices, delivery()).messages) == [1, 1, 1]
    few = compose(notices, delivery(digests=False))
    assert sorted(m.items for m in few.messages) == [("a",), ("b",)] and few.held == {"next_full_run": 1}


def test_a_head_of_sales_gets_one_summary_a_day_and_escalations_in_a_digest() -> None:
    notices = [notice("R8:1:x|head:1", user="1", rule="R8"), notice("R9:2:x|head:1", user="1", rule="R9", deal="2"),
               notice("R1:3:x|escalate:1", user="1", rule="R1", deal="3")]
    facts = SummaryFacts({"R3": 5, "R8": 1}, {"3": 4, "4": 2}, {"1": {"create_task": 7, "message": 3}})
    result = compose(notices, delivery(heads_of_sales=frozenset({"1"}), facts=facts,
                                       user_names={"3": "Ivan [boss]", "4": "Olga"}))
    summary, digest = result.messages
    assert summary.idempotency_key == "summary:1:2026-11-18" and set(summary.items) == {"R8:1:x|head:1", "R9:2:x|head:1"}
    text = summary.params["MESSAGE"]
    assert "Open breaches: 6" in text and "By rule: R3 5, R8 1" in text and "Ivan ［boss］ 4, Olga 2" in text
    assert "tasks: 7" in text and "messages: 3" in text
    assert digest.items == ("R1:3:x|escalate:1",)
    later = compose(notices[:2], delivery(heads_of_sales=frozenset({"1"}), summary_today=frozenset({"1"})))
    assert later.messages == [] and later.held == {"daily_summary": 2}


def test_the_notify_channel_sends_a_tag_only_with_the_applications_client_id() -> None:
    plain = compose([notice("a")], delivery(channel="notify")).messages[0]
    assert plain.method == "im.notify.system.add" and set(plain.params) == {"USER_ID", "MESSAGE"}
    tagged = compose([notice("a")], delivery(channel="notify", client_id="local.app.1")).messages[0]
    assert tagged.params["CLIENT_ID"] == "local.app.1" and tagged.params["TAG"] == "crmbridge|" + tagged.marker[11:-1]


def test_crm_text_cannot_open_or_close_bb_code() -> None:
    assert bb_text("[/b][url=evil]x[/url]") == "［/b］［url=evil］x［/url］"
