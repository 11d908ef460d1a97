"""The Bitrix24 authorization server client and the redirect parsing: errors become the crmbridge exception tree."""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import pytest

from crmbridge.connectors.bitrix24.oauth import AuthorizationServer, grant_from, parse_redirect, validate_oauth_url
from crmbridge.connectors.bitrix24.offline import describe_record
from crmbridge.connectors.http import RawResponse, TransportError
from crmbridge.errors import AuthError, ConfigError, CrmRejected, CrmUnreachable, ReauthorizationRequired, \
    TransientCrmError


class Server:
    """A scripted authorization server: answers in order, records the URLs asked."""

    def __init__(self, *answers: RawResponse | Exception) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []

    def request(self, method: str, url: str, *, body: bytes | None, headers: Mapping[str, str],
                timeout: tuple[float, float]) -> RawResponse:
        assert method == "GET" and body is None
        self.urls.append(url)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def answer(status: int, body: object) -> RawResponse:
    return RawResponse(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


OK = {"access_token": "A1", "refresh_token": "R1", "expires": 1780319382, "expires_in": 3600,
      "client_endpoint": "https://portal.bitrix24.com/rest/", "server_endpoint": "https://oauth.bitrix.info/rest/",
      "domain": "oauth.bitrix.info", "member_id": "a223", "scope": "crm,task", "status": "L", "user_id": 67}


def server(*answers: RawResponse | Exception) -> tuple[AuthorizationServer, Server]:
    fake = Server(*answers)
    return AuthorizationServer("https://oauth.bitrix.info", "app.1", "SECRET", transport=fake,
                               sleep=lambda s: None, clock=lambda: 1000.0), fake


def test_refresh_sends_the_documented_get_and_keeps_the_answers_details() -> None:
    auth, fake = server(answer(200, OK))
    grant = auth.refresh("R0")
    query = parse_qs(urlsplit(fake.urls[0]).query)
    assert fake.urls[0].startswith("https://oauth.bitrix.info/oauth/token/?")
    assert query == {"grant_type": ["refresh_token"], "client_id": ["app.1"], "client_secret": ["SECRET"],
                     "refresh_token": ["R0"]}
    assert (grant.access_token, grant.refresh_token, grant.expires_at) == ("A1", "R1", 1780319382.0)
    assert grant.details["member_id"] == "a223" and "access_token" not in grant.details
    assert "SECRET" not in repr(auth) and "A1" not in repr(grant)


def test_the_code_exchange_answer_without_expires_uses_expires_in() -> None:
    body = {k: v for k, v in OK.items() if k not in ("expires", "user_id")}
    assert grant_from(body, now=1000.0).expires_at == 4600.0
    with pytest.raises(ConfigError):
        grant_from({**body, "client_endpoint": "http://portal.example/rest/"}, now=0)  # a token never goes over http


@pytest.mark.parametrize(("status", "code", "grant_type", "error"), [
    (400, "invalid_grant", "refresh_token", ReauthorizationRequired),
    (400, "invalid_grant", "authorization_code", AuthError),
    (401, "invalid_client", "refresh_token", AuthError),
    (402, "PAYMENT_REQUIRED", "refresh_token", AuthError),
    (400, "invalid_request", "refresh_token", CrmRejected),
    (503, "temporarily_unavailable", "refresh_token", TransientCrmError),
])
def test_server_errors_map_to_the_exception_tree(status: int, code: str, grant_type: str, error: type) -> None:
    answers = [answer(status, {"error": code, "error_description": "refresh_token=R0 is bad"})] * 3
    auth, _ = server(*answers)
    with pytest.raises(error) as raised:
        auth.refresh("R0") if grant_type == "refresh_token" else auth.exchange_code("C")
    assert raised.value.code == code and "R0" not in str(raised.value)
    if code == "invalid_grant" and grant_type == "refresh_token":
        assert "crmbridge connect" in str(raised.value)


def test_no_answer_is_retried_then_unreachable_and_html_is_transient() -> None:
    auth, fake = server(TransportError("could not reach oauth.bitrix.info (connection refused)"),
                        answer(200, OK))
    assert auth.refresh("R0").access_token == "A1" and len(fake.urls) == 2
    auth, fake = server(*[TransportError("could not reach oauth.bitrix.info (connection refused)")] * 3)
    with pytest.raises(CrmUnreachable):
        auth.refresh("R0")
    assert len(fake.urls) == 3
    auth, _ = server(*[RawResponse(502, b"<html>Bad gateway</html>", {"Content-Type": "text/html"})] * 3)
    with pytest.raises(TransientCrmError):
        auth.refresh("R0")


def test_oauth_url_must_be_https_except_on_loopback() -> None:
    assert validate_oauth_url("https://oauth.bitrix.info") == "https://oauth.bitrix.info/"
    assert validate_oauth_url("http://127.0.0.1:8024/") == "http://127.0.0.1:8024/"
    with pytest.raises(ConfigError, match="plain http"):
        validate_oauth_url("http://oauth.example.com/")


def test_a_pasted_redirect_or_a_bare_code() -> None:
    redirect = parse_redirect("https://app.example/h/?code=abc123&state=s1&domain=x.bitrix24.ru&member_id=m1")
    assert (redirect.code, redirect.state, redirect.domain, redirect.member_id) == ("abc123", "s1", "x.bitrix24.ru", "m1")
    assert parse_redirect("  abc123  ").code == "abc123"
    assert "abc123" not in repr(redirect)
    with pytest.raises(ConfigError):
        parse_redirect("https://app.example/h/?state=s1")


@pytest.mark.parametrize(("record", "expected"), [
    ({"EVENT_NAME": "ONCRMDEALUPDATE", "EVENT_DATA": {"FIELDS": {"ID": "12"}}}, ("ONCRMDEALUPDATE", "deal", "12")),
    ({"EVENT_NAME": "ONTASKADD", "EVENT_DATA": {"FIELDS_BEFORE": "undefined", "FIELDS_AFTER": {"ID": "7"}}},
     ("ONTASKADD", "task", "7")),
    ({"EVENT_NAME": "ONTASKDELETE", "EVENT_DATA": {"FIELDS_BEFORE": {"ID": "7"}, "FIELDS_AFTER": "undefined"}},
     ("ONTASKDELETE", "task", "7")),
    ({"EVENT_NAME": "ONCRMLEADADD", "EVENT_DATA": {"FIELDS": {"ID": "1"}}}, "not one crmbridge binds"),
    ({"EVENT_NAME": "ONCRMDEALUPDATE", "EVENT_DATA": False}, "names no record"),
    ({"EVENT_NAME": "ONCRMDEALUPDATE", "EVENT_DATA": {"FIELDS": {"ID": "0"}}}, "names no record id"),
])
def test_what_an_offline_record_is_about(record: dict, expected: object) -> None:
    described = describe_record(record)
    if isinstance(expected, tuple):
        assert described == expected
    else:
        assert isinstance(described, str) and str(expected) in described
