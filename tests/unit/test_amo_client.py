"""The amoCRM client over a mocked transport (`responses`): HAL paging, 204, errors, retries, 401 refresh, limits."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
import responses

from crmbridge.connectors.amocrm.client import AmoCRMClient
from crmbridge.connectors.amocrm.envelope import ValidationRejected
from crmbridge.connectors.amocrm.limiter import FileRateWindow, RateWindow
from crmbridge.connectors.amocrm.transport import LongLivedTokenAuth, validate_base_url
from crmbridge.errors import AuthError, ConfigError, CrmRejected, CrmUnreachable, RateLimited, TransientCrmError
from tests.unit.fake_clock import FakeClock

BASE = "https://acme.amocrm.ru"
TOKEN = "tok-secret-123"


def client(clock: FakeClock | None = None, **options: Any) -> AmoCRMClient:
    clock = clock or FakeClock()
    options.setdefault("auth", LongLivedTokenAuth(TOKEN))
    return AmoCRMClient(BASE, limiter=RateWindow(7, clock=clock.monotonic, sleep=clock.sleep), sleep=clock.sleep,
                        **options)


def hal(key: str, items: list[dict[str, Any]], *, page: int = 1, next_page: bool = False) -> dict[str, Any]:
    links: dict[str, Any] = {"self": {"href": f"{BASE}/api/v4/{key}?page={page}"}}
    if next_page:
        links["next"] = {"href": f"{BASE}/api/v4/{key}?page={page + 1}"}
    return {"_page": page, "_links": links, "_embedded": {key: items}}


def users_after_a_429() -> None:
    """GET /api/v4/users answers nginx's HTML 429 once, then a page of one user."""
    responses.add(responses.GET, f"{BASE}/api/v4/users", status=429, body=b"<html><center>429 Too Many Requests"
                                                                           b"</center><hr>nginx</html>",
                  content_type="text/html")
    responses.add(responses.GET, f"{BASE}/api/v4/users", json=hal("users", [{"id": 5}]))


@pytest.mark.parametrize(("raw", "expected"), [
    ("https://acme.amocrm.ru", "https://acme.amocrm.ru"),
    ("https://Acme.AmoCRM.ru/", "https://acme.amocrm.ru"),
    ("https://acme.kommo.com", "https://acme.kommo.com"),
    ("https://acme.amocrm.com", "https://acme.amocrm.com"),
    ("http://127.0.0.1:8031", "http://127.0.0.1:8031"),
    ("http://localhost:9", "http://localhost:9"),
])
def test_account_urls_are_normalised(raw: str, expected: str) -> None:
    assert validate_base_url(raw) == expected


@pytest.mark.parametrize(("raw", "words"), [
    ("http://acme.amocrm.ru", "plain http"),
    ("https://www.amocrm.ru", "own subdomain"),
    ("https://acme.amocrm.r", "not an amoCRM"),
    ("https://evil.example.com", "not an amoCRM"),
    ("https://acme.amocrm.ru/api/v4", "without a path"),
    ("", "empty"),
])
def test_bad_account_urls_name_the_setting(raw: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_base_url(raw)
    assert "CRMBRIDGE_AMOCRM_BASE_URL" in str(error.value) and words in str(error.value)


@responses.activate
def test_pages_follow_next_links_and_send_php_style_filters_with_the_bearer_token() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/leads", json=hal("leads", [{"id": 1}, {"id": 2}], next_page=True),
                  content_type="application/hal+json")
    responses.add(responses.GET, f"{BASE}/api/v4/leads", json=hal("leads", [{"id": 3}], page=2))
    amo = client()
    rows = list(amo.items("/api/v4/leads", "leads", {"filter": {"updated_at": {"from": 1700000000}},
                                                     "with": "contacts"}))
    assert [row["id"] for row in rows] == [1, 2, 3]
    first = responses.calls[0].request
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "filter%5Bupdated_at%5D%5Bfrom%5D=1700000000" in first.url and "page=1" in first.url
    assert "limit=250" in first.url and "with=contacts" in first.url
    assert "page=2" in responses.calls[1].request.url
    assert amo.requests_made == 2


@responses.activate
def test_204_is_an_empty_last_page_not_an_error() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/leads", status=204, body=b"")
    responses.add(responses.GET, f"{BASE}/api/v4/leads/17", status=204, body=b"")
    amo = client()
    page = amo.page("/api/v4/leads", "leads")
    assert page.items == [] and not page.has_next
    assert amo.get("/api/v4/leads/17") is None


@responses.activate
def test_429_html_holds_everyone_back_then_retries() -> None:
    users_after_a_429()
    clock = FakeClock()
    amo = client(clock)
    assert amo.page("/api/v4/users", "users").items == [{"id": 5}]
    assert amo.requests_made == 2 and amo.retries == 1
    assert sum(clock.sleeps) >= 1.5  # the window's hold after a 429, plus the backoff


@responses.activate
def test_5xx_and_dropped_connections_are_retried_for_reads() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/tasks", status=502, body=b"<html>502 Bad Gateway</html>")
    responses.add(responses.GET, f"{BASE}/api/v4/tasks", body=requests.ConnectionError("reset by peer"))
    responses.add(responses.GET, f"{BASE}/api/v4/tasks", json=hal("tasks", [{"id": 9}]))
    amo = client()
    assert amo.page("/api/v4/tasks", "tasks").items == [{"id": 9}]
    assert amo.requests_made == 3


@responses.activate
def test_a_write_is_not_repeated_after_a_lost_answer_but_is_after_a_429() -> None:
    responses.add(responses.POST, f"{BASE}/api/v4/tasks", status=500, json={"title": "Internal", "status": 500})
    amo = client()
    with pytest.raises(TransientCrmError):
        amo.post("/api/v4/tasks", [{"text": "x"}])
    assert amo.requests_made == 1
    responses.replace(responses.POST, f"{BASE}/api/v4/tasks", status=429, body=b"<html>429</html>")
    responses.add(responses.POST, f"{BASE}/api/v4/tasks", json=hal("tasks", [{"id": 1, "request_id": "0"}]))
    assert amo.post("/api/v4/tasks", [{"text": "x"}])["_embedded"]["tasks"][0]["id"] == 1


@responses.activate
def test_validation_errors_keep_each_items_request_id() -> None:
    body = {"validation-errors": [{"request_id": "1", "errors": [
        {"code": "NotSupportedChoice", "path": "custom_fields_values.0.field_id",
         "detail": "The value you selected is not a valid choice."}]}],
        "title": "Bad Request", "type": "https://httpstatus.es/400", "status": 400, "detail": "Request validation failed"}
    responses.add(responses.PATCH, f"{BASE}/api/v4/leads", status=400, json=body,
                  content_type="application/problem+json")
    with pytest.raises(ValidationRejected) as error:
        client().patch("/api/v4/leads", [{"id": 1}, {"id": 2}])
    assert set(error.value.by_request_id) == {"1"}
    assert "NotSupportedChoice" in error.value.by_request_id["1"]
    assert error.value.status == 400 and not error.value.retryable


@responses.activate
def test_blocked_account_403_html_is_one_clear_error_never_retried() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/account", status=403, body=b"<html>403 Forbidden</html>")
    amo = client()
    with pytest.raises(CrmRejected) as error:
        amo.get("/api/v4/account")
    assert "blocked" in str(error.value) and amo.requests_made == 1


class RotatingAuth:
    kind = "oauth"

    def __init__(self) -> None:
        self.current = "old"
        self.refreshed: list[str] = []

    def token(self) -> str:
        return self.current

    def refresh(self, rejected: str) -> bool:
        self.refreshed.append(rejected)
        self.current = "new"
        return True


@responses.activate
def test_a_401_refreshes_and_repeats_once_and_a_second_401_is_an_auth_error() -> None:
    unauthorized = {"title": "Unauthorized", "type": "https://httpstatus.es/401", "status": 401,
                    "detail": "Неверный логин или пароль"}
    responses.add(responses.GET, f"{BASE}/api/v4/account", status=401, json=unauthorized)
    responses.add(responses.GET, f"{BASE}/api/v4/account", json={"id": 1, "subdomain": "acme"})
    auth = RotatingAuth()
    amo = client(auth=auth)
    assert amo.get("/api/v4/account") == {"id": 1, "subdomain": "acme"}
    assert auth.refreshed == ["old"]
    assert responses.calls[1].request.headers["Authorization"] == "Bearer new"
    responses.replace(responses.GET, f"{BASE}/api/v4/account", status=401, json=unauthorized)
    with pytest.raises(AuthError) as error:
        amo.get("/api/v4/account")
    assert "connect --crm amocrm" in str(error.value)


@responses.activate
def test_a_long_lived_token_401_says_how_to_fix_it_and_never_shows_the_token() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/account", status=401,
                  json={"title": "Unauthorized", "status": 401, "detail": f"token {TOKEN} revoked"})
    with pytest.raises(AuthError) as error:
        client().get("/api/v4/account")
    assert "CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN" in str(error.value)
    assert TOKEN not in repr(LongLivedTokenAuth(TOKEN))


@responses.activate
def test_unreachable_account_is_redacted_and_retried() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/account", body=requests.ConnectTimeout("timed out"))
    amo = client(max_attempts=2)
    with pytest.raises(CrmUnreachable):
        amo.get("/api/v4/account")
    assert amo.requests_made == 2


@responses.activate
def test_the_account_clock_comes_from_the_date_header() -> None:
    responses.add(responses.GET, f"{BASE}/api/v4/account", json={"id": 1},
                  headers={"Date": "Tue, 14 Nov 2023 22:13:20 GMT"})
    amo = client()
    amo.get("/api/v4/account")
    assert amo.server_time == 1700000000.0


def test_the_window_never_lets_an_eighth_request_into_one_second_across_threads() -> None:
    window = RateWindow(7, margin=0.0)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        for number in range(4):
            ticket = window.acquire()
            sent = time.monotonic()
            time.sleep(0.03 * (number % 3))  # requests of uneven length: a slow one must not let others bunch up
            answered = time.monotonic()
            window.release(ticket)
            with lock:
                spans.append((sent, answered))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == 16
    # wherever the account takes each request (between its send and its answer), no second holds eight:
    # for any eight requests, the last one was sent a second or more after the first one was answered
    spans.sort()
    for index in range(len(spans) - 7):
        group = spans[index:index + 8]
        assert max(sent for sent, _ in group) - min(answered for _, answered in group) >= 0.999


def test_a_request_still_on_its_way_holds_its_slot() -> None:
    clock = FakeClock()
    window = RateWindow(2, margin=0.0, clock=clock.monotonic, sleep=clock.sleep)
    slow = window.acquire()
    fast = window.acquire()
    window.release(fast)
    clock.advance(5.0)  # the slow one has not come back: only one slot is free again
    window.release(window.acquire())
    assert clock.sleeps == []
    clock.advance(1.0)
    window.release(slow)  # answered now: it counts for one more second
    window.release(window.acquire())
    third = window.acquire()
    assert clock.sleeps and abs(sum(clock.sleeps) - 1.0) < 0.01
    window.release(third)


def test_the_file_window_is_shared_by_two_objects_like_two_processes(tmp_path: Any) -> None:
    clock = FakeClock()
    first = FileRateWindow(tmp_path / "rate", 7, margin=0.0, clock=clock.wall, sleep=clock.sleep)
    second = FileRateWindow(tmp_path / "rate", 7, margin=0.0, clock=clock.wall, sleep=clock.sleep)
    for index in range(7):
        window = first if index % 2 else second
        window.release(window.acquire())
    assert clock.sleeps == []
    first.release(first.acquire())  # the eighth waits for the first answer to leave the window
    assert clock.sleeps and abs(sum(clock.sleeps) - 1.0) < 1e-6
    second.hold(2.0)
    first.release(first.acquire())
    assert sum(clock.sleeps) >= 3.0 - 1e-6
    stuck = FileRateWindow(tmp_path / "rate", 7, margin=0.0, flight_bound=10.0, clock=clock.wall, sleep=clock.sleep)
    for _ in range(7):
        stuck.acquire()  # a process that dies mid-request never releases: its slots come back after the bound
    before = sum(clock.sleeps)
    first.release(first.acquire())
    assert 9.0 <= sum(clock.sleeps) - before <= 10.0 + 1e-6


@responses.activate
def test_every_request_is_told_to_the_metrics_by_route_and_outcome() -> None:
    users_after_a_429()
    responses.add(responses.GET, f"{BASE}/api/v4/leads/17", status=204, body=b"")
    requests_seen: list[tuple[str, str]] = []
    calls_seen: list[tuple[str, str]] = []
    amo = client(observer=lambda *seen: requests_seen.append(seen), on_call=lambda *seen: calls_seen.append(seen))
    amo.page("/api/v4/users", "users")
    amo.get("/api/v4/leads/17")
    # a lead's id is not a label: the route is
    assert requests_seen == [("GET /api/v4/users", "429"), ("GET /api/v4/users", "200"),
                             ("GET /api/v4/leads/{id}", "204")]
    assert [call for call in calls_seen if call[1] == "ok"] == [("GET /api/v4/users", "ok"),
                                                                 ("GET /api/v4/leads/{id}", "ok")]
    assert len(calls_seen) == 3 and calls_seen[0][0] == "GET /api/v4/users" and calls_seen[0][1] != "ok"
