"""Parsing and authenticating Bitrix24 outgoing events (pure)."""

from __future__ import annotations

from urllib.parse import urlencode

from crmbridge.live.bitrix24_events import PortalIdentity, Verdict, parse_event, portal_domain, redact_auth
from crmbridge.live.reread import affected
from crmbridge.live.inbox import InboxRow
from crmbridge.sandbox.events import event_data

IDENTITY = PortalIdentity("tok", "example.bitrix24.ru", "m1")


def body(event: str, data: dict[str, str], **auth: str) -> bytes:
    fields = {"event": event, "event_handler_id": "3", **data, "ts": "1766047124",
              "auth[domain]": "example.bitrix24.ru", "auth[member_id]": "m1", "auth[application_token]": "tok"}
    fields.update({f"auth[{key}]": value for key, value in auth.items()})
    return urlencode(fields).encode()


def test_each_event_kind_names_its_entity_as_the_docs_shape_it() -> None:
    cases = {
        "ONCRMDEALUPDATE": ("deal", "759"), "ONCRMDEALDELETE": ("deal", "759"), "ONTASKADD": ("task", "759"),
        "ONTASKUPDATE": ("task", "759"), "ONTASKDELETE": ("task", "759"), "ONCRMACTIVITYADD": ("activity", "759"),
        "ONCRMCONTACTUPDATE": ("contact", "759"), "ONCRMCOMPANYUPDATE": ("company", "759"),
    }
    for event, (entity, entity_id) in cases.items():
        parsed = parse_event(body(event, event_data(event, 759)), IDENTITY)
        assert (parsed.verdict, parsed.event, parsed.entity, parsed.entity_id) == (Verdict.ACCEPT, event, entity,
                                                                                   entity_id), event


def test_event_names_are_case_insensitive_and_unknown_ones_ignored() -> None:
    assert parse_event(body("onCrmActivityAdd", {"data[FIELDS][ID]": "9"}), IDENTITY).event == "ONCRMACTIVITYADD"
    assert parse_event(body("ONCRMLEADADD", {"data[FIELDS][ID]": "9"}), IDENTITY).verdict is Verdict.IGNORE


def test_authenticity_comes_before_anything_else() -> None:
    assert parse_event(body("ONCRMDEALUPDATE", {}, application_token="x"), IDENTITY).verdict is Verdict.FORGED
    assert parse_event(b"event=ONCRMDEALUPDATE", IDENTITY).verdict is Verdict.FORGED
    assert parse_event(b"\xff", IDENTITY).verdict is Verdict.FORGED
    assert parse_event(body("ONCRMDEALUPDATE", {"data[FIELDS][ID]": "1"}, domain="evil.ru"), IDENTITY).verdict \
        is Verdict.FOREIGN
    assert parse_event(body("ONCRMDEALUPDATE", {"data[FIELDS][ID]": "1"}, member_id="m2"), IDENTITY).verdict \
        is Verdict.FOREIGN
    assert parse_event(body("ONCRMDEALUPDATE", {}), IDENTITY).verdict is Verdict.MALFORMED
    assert parse_event(body("ONCRMDEALUPDATE", {"data[FIELDS][ID]": "1 OR 1"}), IDENTITY).verdict is Verdict.MALFORMED
    assert parse_event(body("", {"data[FIELDS][ID]": "1"}), IDENTITY).verdict is Verdict.MALFORMED


def test_portal_domain_keeps_the_port_only_when_the_url_has_one() -> None:
    assert portal_domain("https://Example.bitrix24.ru/rest/1/abc/") == "example.bitrix24.ru"
    assert portal_domain("http://127.0.0.1:8080/rest/1/abc/") == "127.0.0.1:8080"


def test_a_rounds_events_coalesce_per_entity() -> None:
    def row(n: int, event: str, entity: str, entity_id: str) -> InboxRow:
        return InboxRow(n, "bitrix24.webhook", event, entity, entity_id, "", "", 0)

    found = affected([row(1, "ONCRMDEALUPDATE", "deal", "5"), row(2, "ONCRMDEALUPDATE", "deal", "5"),
                      row(3, "ONCRMDEALDELETE", "deal", "6"), row(4, "ONCRMDEALUPDATE", "deal", "6"),
                      row(5, "ONTASKUPDATE", "task", "7"), row(6, "ONTASKDELETE", "task", "8"),
                      row(7, "ONCRMCONTACTUPDATE", "contact", "9")])
    assert found.deals == {5} and found.deleted_deals == {6}
    assert found.tasks == {7} and found.deleted_tasks == {8} and found.contacts == {9}


def test_credentials_are_redacted_from_what_is_kept() -> None:
    body = urlencode({"event": "ONCRMDEALUPDATE", "data[FIELDS][ID]": "7", "auth[access_token]": "s3cr3t-a",
                      "auth[refresh_token]": "s3cr3t-r", "auth[application_token]": "s3cr3t-t", "auth[domain]": "x.bitrix24.ru"})
    kept = redact_auth(body)
    assert "s3cr3t" not in kept
    assert "auth%5Bdomain%5D=x.bitrix24.ru" in kept and "data%5BFIELDS%5D%5BID%5D=7" in kept
    assert redact_auth("auth[application_token]=secret&event=X") == "auth[application_token]=***&event=X"
    assert redact_auth("event=X&AUTH%5bACCESS_TOKEN%5d=secret") == "event=X&AUTH%5bACCESS_TOKEN%5d=***"
