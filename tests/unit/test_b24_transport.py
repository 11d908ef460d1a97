"""Webhook URL validation, secret redaction and the requests-based transport (mocked with `responses`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses

from crmbridge.connectors.bitrix24.transport import (
    DEFAULT_TIMEOUT,
    RequestsTransport,
    TransportError,
    WebhookAuth,
    redact,
    validate_webhook_url,
)
from crmbridge.errors import ConfigError

SECRET = "s3cr3tcode42"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"https://portal.bitrix24.ru/rest/1/{SECRET}/", f"https://portal.bitrix24.ru/rest/1/{SECRET}/"),
        (f"https://portal.bitrix24.ru/rest/1/{SECRET}", f"https://portal.bitrix24.ru/rest/1/{SECRET}/"),
        (f"  HTTPS://Portal.Bitrix24.RU/rest/17/{SECRET}/  ", f"https://portal.bitrix24.ru/rest/17/{SECRET}/"),
        (f"https://portal.example.com:8443/rest/1/{SECRET}/", f"https://portal.example.com:8443/rest/1/{SECRET}/"),
        ("http://127.0.0.1:8080/rest/1/sandboxcode/", "http://127.0.0.1:8080/rest/1/sandboxcode/"),
        ("http://127.3.4.5/rest/1/sandboxcode", "http://127.3.4.5/rest/1/sandboxcode/"),
        ("http://localhost:9/rest/1/sandboxcode/", "http://localhost:9/rest/1/sandboxcode/"),
        ("http://[::1]:9/rest/1/sandboxcode/", "http://[::1]:9/rest/1/sandboxcode/"),
    ],
)
def test_valid_webhook_urls_are_normalised(raw: str, expected: str) -> None:
    assert validate_webhook_url(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        f"http://portal.bitrix24.ru/rest/1/{SECRET}/",  # plain http to a real host
        f"http://10.0.0.1/rest/1/{SECRET}/",
        f"ftp://portal.bitrix24.ru/rest/1/{SECRET}/",
        f"https:///rest/1/{SECRET}/",
        f"https://portal.bitrix24.ru/rest/x/{SECRET}/",  # user id not digits
        f"https://portal.bitrix24.ru/rest/1/{SECRET}/crm.deal.list.json",  # method appended
        f"https://portal.bitrix24.ru/rest/1/{SECRET}/?x=1",
        f"https://portal.bitrix24.ru/rest/1/{SECRET}/#frag",
        f"https://user:pw@portal.bitrix24.ru/rest/1/{SECRET}/",
        f"https://portal.bitrix24.ru/api/1/{SECRET}/",
        "https://portal.bitrix24.ru/rest/1/",
        f"https://portal.bitrix24.ru:notaport/rest/1/{SECRET}/",
    ],
)
def test_invalid_webhook_urls_name_the_setting_and_hide_the_code(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_webhook_url(raw)
    text = str(caught.value)
    assert "CRMBRIDGE_BITRIX24_WEBHOOK_URL" in text
    assert SECRET not in text


def test_redact_hides_webhook_codes_and_tokens() -> None:
    text = (
        f"HTTPSConnectionPool(host='p.bitrix24.ru'): url: /rest/1/{SECRET}/crm.deal.list.json "
        'auth=tok123&x=1 {"access_token": "abc", "refresh_token":"def"}'
    )
    shown = redact(text)
    assert SECRET not in shown and "tok123" not in shown and "abc" not in shown and "def" not in shown
    assert "/rest/1/***/crm.deal.list.json" in shown


def test_webhook_auth_builds_method_urls_and_never_shows_the_code() -> None:
    auth = WebhookAuth(f"https://portal.bitrix24.ru/rest/1/{SECRET}")
    assert auth.url_for("crm.deal.list") == f"https://portal.bitrix24.ru/rest/1/{SECRET}/crm.deal.list.json"
    assert auth.extra_params() == {}
    assert auth.refresh() is False
    assert SECRET not in repr(auth)
    assert auth.redacted_url == "https://portal.bitrix24.ru/rest/1/***/"


@responses.activate
def test_requests_transport_posts_bytes_with_headers_and_timeouts() -> None:
    url = f"https://portal.bitrix24.ru/rest/1/{SECRET}/crm.deal.get.json"
    responses.add(responses.POST, url, json={"result": {"ID": "1"}}, status=200)
    transport = RequestsTransport()
    answer = transport.post(
        url,
        body=b'{"id": 1}',
        headers={"User-Agent": "crmbridge/test", "Content-Type": "application/json"},
        timeout=DEFAULT_TIMEOUT,
    )
    assert answer.status == 200
    assert json.loads(answer.content) == {"result": {"ID": "1"}}
    assert answer.content_type.startswith("application/json")
    sent: Any = responses.calls[0].request  # responses adds req_kwargs to the recorded request
    assert sent.headers["User-Agent"] == "crmbridge/test"
    assert sent.body == b'{"id": 1}'
    assert sent.req_kwargs["timeout"] == (5.0, 65.0)
    transport.close()


@responses.activate
def test_requests_transport_does_not_follow_redirects() -> None:
    url = f"https://portal.bitrix24.ru/rest/1/{SECRET}/crm.deal.get.json"
    responses.add(responses.POST, url, status=302, headers={"Location": "https://elsewhere.example/"})
    answer = RequestsTransport().post(url, body=b"{}", headers={}, timeout=DEFAULT_TIMEOUT)
    assert answer.status == 302
    assert len(responses.calls) == 1


@responses.activate
def test_requests_transport_failures_are_redacted_transport_errors() -> None:
    url = f"https://portal.bitrix24.ru/rest/1/{SECRET}/crm.deal.get.json"
    responses.add(responses.POST, url, body=requests.ConnectionError(f"refused while calling {url}"))
    responses.add(responses.POST, url, body=requests.ReadTimeout(f"read timed out on {url}"))
    transport = RequestsTransport()
    with pytest.raises(TransportError) as refused:
        transport.post(url, body=b"{}", headers={}, timeout=DEFAULT_TIMEOUT)
    assert SECRET not in str(refused.value) and not refused.value.timeout
    assert refused.value.__suppress_context__  # the original (unredacted) exception is not chained for display
    with pytest.raises(TransportError) as timed_out:
        transport.post(url, body=b"{}", headers={}, timeout=DEFAULT_TIMEOUT)
    assert SECRET not in str(timed_out.value) and timed_out.value.timeout
