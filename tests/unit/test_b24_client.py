"""Bitrix24Client over `responses`: calls, retries, auth refresh, batch, batch_calls and both list patterns."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest
from fake_clock import WALL0, FakeClock
import requests
import responses

from crmbridge import __version__
from crmbridge.connectors.bitrix24.client import Bitrix24Client, should_retry
from crmbridge.errors import (
    AuthError,
    AuthExpired,
    BatchCommandError,
    CrmError,
    CrmRejected,
    CrmUnreachable,
    OperatingTimeExceeded,
    RateLimited,
    ScopeError,
    TransientCrmError,
)

SECRET = "s3cretcode"
BASE = f"https://portal.example.com/rest/1/{SECRET}/"
Headers = dict[str, str]
Reply = tuple[int, Headers, str]


def url(method: str) -> str:
    return f"{BASE}{method}.json"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make_client(clock: FakeClock, **kwargs: Any) -> Bitrix24Client:
    # the mocked portal starts idle (a real client without a bucket file assumes a full bucket: see the limiter tests)
    kwargs.setdefault("bucket_level", 0.0)
    return Bitrix24Client(
        BASE, clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall, rng=random.Random(7), **kwargs
    )


def sent(request: Any) -> Any:
    """The JSON body of a recorded request (typed loosely: requests types bodies as a union)."""
    return json.loads(request.body or b"{}")


def ok_json(result: Any, **extra: Any) -> dict[str, Any]:
    return {"result": result, **extra, "time": {"start": 1.0, "finish": 1.1, "duration": 0.1}}


def err_json(code: str, description: str = "", **extra: Any) -> dict[str, Any]:
    return {"error": code, "error_description": description, **extra}


# -- single calls -------------------------------------------------------------------------------------
def test_call_posts_json_with_user_agent_and_parses_the_envelope(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    rsps.add(
        responses.POST,
        url("crm.deal.list"),
        json={"result": [{"ID": "1"}], "total": 1, "time": {"operating": 2.5, "operating_reset_at": WALL0 + 60}},
    )
    client = make_client(clock)
    answer = client.call("crm.deal.list", {"filter": {">ID": 0}, "select": ["ID"]})
    assert answer.result == [{"ID": "1"}] and answer.total == 1 and answer.next is None
    request: Any = rsps.calls[0].request
    assert request.headers["User-Agent"] == f"crmbridge/{__version__}"
    assert request.headers["Content-Type"].startswith("application/json")
    assert sent(request) == {"filter": {">ID": 0}, "select": ["ID"]}
    assert request.req_kwargs["timeout"] == (5.0, 65.0)
    assert client.requests_made == 1 and client.retries == 0
    assert client.operating_seconds() == {"crm.deal.list": 2.5}


def test_should_retry_is_the_retryable_flag() -> None:
    assert should_retry(RateLimited("x", method="m"))
    assert should_retry(CrmUnreachable("x", method="m"))
    assert not should_retry(CrmRejected("x", method="m"))
    assert not should_retry(AuthExpired("x", method="m"))
    assert not should_retry(ValueError("x"))


def test_transient_errors_are_retried_with_backoff_and_logged(
    rsps: responses.RequestsMock, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.add(
        responses.POST, url("crm.deal.get"), json=err_json("QUERY_LIMIT_EXCEEDED", "Too many requests"), status=503
    )
    rsps.add(responses.POST, url("crm.deal.get"), json=err_json("INTERNAL_SERVER_ERROR"), status=500)
    rsps.add(responses.POST, url("crm.deal.get"), body="<html>Bad gateway</html>", status=502, content_type="text/html")
    rsps.add(responses.POST, url("crm.deal.get"), json=ok_json({"ID": "7"}))
    client = make_client(clock)
    with caplog.at_level(logging.WARNING, logger="crmbridge.bitrix24"):
        answer = client.call("crm.deal.get", {"id": 7})
    assert answer.result == {"ID": "7"}
    assert client.requests_made == 4 and client.retries == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("crm.deal.get" in w for w in warnings)
    assert "RateLimited" in warnings[0] and "TransientCrmError" in warnings[1]
    assert SECRET not in caplog.text
    assert len(clock.sleeps) >= 3  # backoff sleeps (plus the bucket wait after the 503)
    assert all(0 < s <= 30 for s in clock.sleeps)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "", CrmRejected),
        (404, "ERROR_METHOD_NOT_FOUND", CrmRejected),
        (401, "NO_AUTH_FOUND", AuthError),
        (403, "insufficient_scope", ScopeError),
        (400, "ERROR_CORE", CrmRejected),
    ],
)
def test_client_errors_fail_fast(
    rsps: responses.RequestsMock, clock: FakeClock, status: int, code: str, expected: type[CrmError]
) -> None:
    rsps.add(responses.POST, url("crm.deal.list"), json=err_json(code, "nope"), status=status)
    client = make_client(clock)
    with pytest.raises(expected):
        client.call("crm.deal.list")
    assert client.requests_made == 1 and client.retries == 0 and clock.sleeps == []


def test_retries_are_bounded(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("crm.deal.list"), json=err_json("INTERNAL_SERVER_ERROR"), status=500)
    client = make_client(clock, max_attempts=3)
    with pytest.raises(TransientCrmError):
        client.call("crm.deal.list")
    assert client.requests_made == 3 and client.retries == 2


def test_connection_errors_are_unreachable_retried_and_redacted(
    rsps: responses.RequestsMock, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.add(responses.POST, url("crm.deal.list"), body=requests.ConnectionError(f"refused: {url('crm.deal.list')}"))
    client = make_client(clock, max_attempts=2)
    with caplog.at_level(logging.DEBUG), pytest.raises(CrmUnreachable) as caught:
        client.call("crm.deal.list")
    assert "CrmUnreachable" in caplog.text and SECRET not in caplog.text
    assert client.requests_made == 2
    # the message names the host, never the webhook path that holds the secret
    assert SECRET not in str(caught.value) and "could not reach portal.example.com" in str(caught.value)
    assert caught.value.method == "crm.deal.list"


def test_operating_limit_429_waits_until_reset_at_then_resumes(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(
        responses.POST,
        url("crm.deal.list"),
        json=err_json("OPERATION_TIME_LIMIT", "Method is blocked", time={"operating_reset_at": WALL0 + 200}),
        status=429,
    )
    rsps.add(responses.POST, url("crm.deal.list"), json=ok_json([]))
    client = make_client(clock)
    assert client.call("crm.deal.list").result == []
    # One wait, until the reset (plus the pad), and no exponential backoff on top of it.
    assert clock.sleeps == [pytest.approx(201.0)]
    assert client.requests_made == 2 and client.retries == 1


def test_operating_time_reported_near_the_limit_paces_the_next_call(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    rsps.add(
        responses.POST,
        url("crm.deal.list"),
        json={"result": [], "time": {"operating": 450.0, "operating_reset_at": WALL0 + 50}},
    )
    client = make_client(clock, operating_limit=480.0)
    client.call("crm.deal.list")
    assert clock.sleeps == []
    client.call("crm.deal.list")
    assert clock.sleeps == [pytest.approx(51.0)]


class RefreshingAuth:
    """An OAuth-like auth whose refresh succeeds; counts refreshes."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.token = "old"

    def url_for(self, method: str) -> str:
        return url(method)

    def extra_params(self) -> dict[str, Any]:
        return {"auth": self.token}

    def refresh(self) -> bool:
        self.refreshes += 1
        self.token = "new"
        return True


def test_auth_expired_refreshes_once_and_repeats(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(
        responses.POST,
        url("crm.deal.get"),
        json=err_json("expired_token", "The access token provided has expired"),
        status=401,
    )
    rsps.add(responses.POST, url("crm.deal.get"), json=ok_json({"ID": "1"}))
    auth = RefreshingAuth()
    client = Bitrix24Client(auth=auth, clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall, bucket_level=0.0)
    assert client.call("crm.deal.get", {"id": 1}).result == {"ID": "1"}
    assert auth.refreshes == 1
    assert [sent(c.request)["auth"] for c in rsps.calls] == ["old", "new"]


def test_auth_expired_twice_gives_up_after_one_refresh(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("crm.deal.get"), json=err_json("expired_token"), status=401)
    auth = RefreshingAuth()
    client = Bitrix24Client(auth=auth, clock=clock.monotonic, sleep=clock.sleep, wall=clock.wall, bucket_level=0.0)
    with pytest.raises(AuthExpired):
        client.call("crm.deal.get")
    assert auth.refreshes == 1 and client.requests_made == 2


def test_webhook_auth_expired_is_not_repeated(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("crm.deal.get"), json=err_json("expired_token"), status=401)
    client = make_client(clock)
    with pytest.raises(AuthExpired):
        client.call("crm.deal.get")
    assert client.requests_made == 1


def test_bad_method_names_and_constructor_arguments_are_refused(clock: FakeClock) -> None:
    client = make_client(clock)
    for bad in ("../profile", "crm.deal.list?x=1", "", "crm..deal"):
        with pytest.raises(ValueError):
            client.call(bad)
    with pytest.raises(ValueError):
        Bitrix24Client()
    assert SECRET not in repr(client)


# -- batch ----------------------------------------------------------------------------------------------
def test_batch_sends_encoded_commands_with_literal_references(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(
        responses.POST,
        url("batch"),
        json={
            "result": {
                "result": {"u": {"ID": "1", "UF_DEPARTMENT": [3]}, "d": [{"ID": "3"}]},
                "result_error": [],
                "result_total": {"d": 1},
                "result_next": [],
                "result_time": [],
            },
            "time": {},
        },
    )
    client = make_client(clock)
    result = client.batch(
        {
            "u": ("user.current", {}),
            "d": ("department.get", {"ID": "$result[u][UF_DEPARTMENT][0]"}),
        }
    )
    body = sent(rsps.calls[0].request)
    assert body == {"halt": 0, "cmd": {"u": "user.current?", "d": "department.get?ID=$result[u][UF_DEPARTMENT][0]"}}
    assert result.results["d"] == [{"ID": "3"}] and result.totals == {"d": 1} and result.ok
    assert client.requests_made == 1


def test_batch_encodes_nested_filters_and_booleans(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("batch"), json={"result": {"result": {"a": []}}, "time": {}})
    client = make_client(clock)
    client.batch(
        {
            "a": (
                "crm.deal.list",
                {"filter": {">ID": 5, "CLOSED": False, "@STAGE_ID": ["NEW", "WON"]}, "select": ["ID"], "start": -1},
            )
        },
        halt=True,
    )
    body = sent(rsps.calls[0].request)
    assert body["halt"] == 1
    assert body["cmd"]["a"] == (
        "crm.deal.list?filter[%3EID]=5&filter[CLOSED]=0&filter[%40STAGE_ID][0]=NEW&filter[%40STAGE_ID][1]=WON"
        "&select[0]=ID&start=-1"
    )


def test_batch_surfaces_per_command_errors_and_records_operating_time(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    rsps.add(
        responses.POST,
        url("batch"),
        json={
            "result": {
                "result": {"ok": {"ID": "1"}},
                "result_error": {
                    "scope": {"error": "insufficient_scope", "error_description": ""},
                    "gone": {"error": "", "error_description": "Not found"},
                    "slow": {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked"},
                },
                "result_total": [],
                "result_next": [],
                "result_time": {"ok": {"operating": 12.5, "operating_reset_at": WALL0 + 30}},
            },
            "time": {},
        },
    )
    client = make_client(clock)
    result = client.batch(
        {
            "ok": ("crm.deal.get", {"id": 1}),
            "scope": ("tasks.task.get", {"taskId": 1}),
            "gone": ("crm.deal.get", {"id": 2}),
            "slow": ("crm.contact.list", {}),
        }
    )
    assert result.results == {"ok": {"ID": "1"}}
    assert isinstance(result.errors["scope"], ScopeError) and "'task'" in str(result.errors["scope"])
    assert isinstance(result.errors["gone"], BatchCommandError) and result.errors["gone"].command == "gone"
    assert isinstance(result.errors["slow"], OperatingTimeExceeded)
    assert client.operating_seconds()["crm.deal.get"] == 12.5
    # the blocked method is held until its reset on the next request that runs it
    assert client.operating_seconds()["crm.contact.list"] == 480.0


def test_batch_limits(clock: FakeClock) -> None:
    client = make_client(clock)
    assert client.batch({}).results == {}
    assert client.requests_made == 0
    with pytest.raises(ValueError):
        client.batch({f"k{i}": ("crm.deal.get", {"id": i}) for i in range(51)})
    with pytest.raises(ValueError):
        client.batch({"a": ("batch", {})})
    with pytest.raises(ValueError):
        client.batch({"a[0]": ("crm.deal.get", {})})


# -- a fake portal for batch_calls and lists -----------------------------------------------------------------
_REF = re.compile(r"^\$result\[([^\]]+)\]((?:\[[^\]]*\])+)$")


def parse_query(query: str) -> dict[str, str]:
    """Flat PHP-style pairs; `$result[...]` values are kept as sent (they must arrive literal)."""
    pairs: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        pairs[unquote_plus(key)] = value if value.startswith("$result") else unquote_plus(value)
    return pairs


class FakePortal:
    """Answers list methods and batches of them over a set of ids, the way the docs describe."""

    def __init__(
        self,
        ids: list[int],
        *,
        result_key: str | None = None,
        row_key: str = "ID",
        honour_filter: bool = True,
        command_failures: dict[tuple[int, str], dict[str, str]] | None = None,
    ) -> None:
        self.ids = sorted(ids)
        self.result_key = result_key
        self.row_key = row_key
        self.honour_filter = honour_filter
        self.command_failures = command_failures or {}
        self.batches: list[dict[str, str]] = []
        self.calls: list[dict[str, Any]] = []

    def page(self, after: int) -> Any:
        start = [i for i in self.ids if i > after] if self.honour_filter else self.ids
        rows = [{self.row_key: str(i), "TITLE": f"deal {i}"} for i in start[:50]]
        return {self.result_key: rows} if self.result_key else rows

    def resolve(self, value: str, results: dict[str, Any]) -> Any:
        match = _REF.match(value)
        if match is None:
            return value
        node: Any = results[match.group(1)]
        for segment in re.findall(r"\[([^\]]*)\]", match.group(2)):
            node = node[int(segment)] if isinstance(node, list) else node[segment]
        return node

    def __call__(self, request: requests.PreparedRequest) -> Reply:
        method = str(request.url).rsplit("/", 1)[-1].removesuffix(".json")
        body = sent(request)
        if method != "batch":
            self.calls.append(body)
            # the first page counts the rows left (start=0): chains are sized to them
            assert body["start"] == 0 and body["order"] == {"ID": "ASC"}
            after = int(body["filter"][">ID"])
            left = len([i for i in self.ids if i > after]) if self.honour_filter else len(self.ids)
            return 200, {}, json.dumps(ok_json(self.page(after), total=left))
        number = len(self.batches)
        self.batches.append(body["cmd"])
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        times: dict[str, Any] = {}
        for key, command in body["cmd"].items():
            failure = self.command_failures.get((number, key))
            if failure is not None:
                errors[key] = failure
            else:
                _, _, query = command.partition("?")
                params = parse_query(query)
                try:
                    after = self.resolve(params["filter[>ID]"], results)
                except (KeyError, IndexError):
                    errors[key] = {"error": "", "error_description": "reference not found"}
                else:
                    results[key] = self.page(int(after))
                    times[key] = {"operating": 1.0 + number, "operating_reset_at": WALL0 + 90}
            if errors and body["halt"]:
                break
        block: dict[str, Any] = {
            "result": results or [],
            "result_error": errors or [],
            "result_total": [],
            "result_next": [],
            "result_time": times or [],
        }
        return 200, {}, json.dumps({"result": block, "time": {}})


def install(rsps: responses.RequestsMock, portal: Callable[[requests.PreparedRequest], Reply], *methods: str) -> None:
    for method in (*methods, "batch"):
        rsps.add_callback(responses.POST, url(method), callback=portal)


# -- batch_calls ------------------------------------------------------------------------------------------------
class EchoPortal:
    """Each command `crm.deal.get?id=N` answers {"ID": N}; chosen commands fail a number of times."""

    def __init__(self, failures: dict[int, tuple[int, dict[str, str]]] | None = None) -> None:
        self.failures = failures or {}
        self.seen: list[int] = []
        self.sizes: list[int] = []

    def __call__(self, request: requests.PreparedRequest) -> Reply:
        cmd = sent(request)["cmd"]
        self.sizes.append(len(cmd))
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, command in cmd.items():
            ident = int(parse_query(command.partition("?")[2])["id"])
            self.seen.append(ident)
            times, error = self.failures.get(ident, (0, {}))
            if times:
                self.failures[ident] = (times - 1, error)
                errors[key] = error
            else:
                results[key] = {"ID": ident}
        return 200, {}, json.dumps({"result": {"result": results or [], "result_error": errors or []}, "time": {}})


def test_batch_calls_chunks_by_50_and_keeps_order(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    portal = EchoPortal()
    rsps.add_callback(responses.POST, url("batch"), callback=portal)
    client = make_client(clock)
    answers = client.batch_calls([("crm.deal.get", {"id": i}) for i in range(120)])
    assert answers == [{"ID": i} for i in range(120)]
    assert portal.sizes == [50, 50, 20]
    assert client.requests_made == 3


def test_batch_calls_retries_retryable_commands_in_a_later_batch(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    limit = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    portal = EchoPortal({3: (1, limit), 60: (2, {"error": "INTERNAL_SERVER_ERROR", "error_description": ""})})
    rsps.add_callback(responses.POST, url("batch"), callback=portal)
    client = make_client(clock)
    answers = client.batch_calls([("crm.deal.get", {"id": i}) for i in range(70)])
    assert answers == [{"ID": i} for i in range(70)]
    # 0..49 (3 fails), 50..69 + 3 (60 fails), 60 alone (fails again), 60 alone (succeeds)
    assert portal.sizes == [50, 21, 1, 1]
    assert client.retries == 3


def test_batch_calls_puts_failures_in_place_and_bounds_retries(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    portal = EchoPortal(
        {
            1: (99, {"error": "", "error_description": "Not found"}),
            2: (99, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        }
    )
    rsps.add_callback(responses.POST, url("batch"), callback=portal)
    client = make_client(clock, max_attempts=3)
    answers = client.batch_calls([("crm.deal.get", {"id": i}) for i in range(4)])
    assert answers[0] == {"ID": 0} and answers[3] == {"ID": 3}
    assert isinstance(answers[1], BatchCommandError) and "Not found" in str(answers[1])
    assert isinstance(answers[2], RateLimited)
    assert portal.seen.count(1) == 1  # a rejection is never retried
    assert portal.seen.count(2) == 3  # a retryable one at most max_attempts times
    assert client.requests_made == 3


def test_batch_calls_of_nothing_sends_nothing(clock: FakeClock) -> None:
    client = make_client(clock)
    assert client.batch_calls([]) == []
    assert client.requests_made == 0


# -- plain paging ----------------------------------------------------------------------------------------------
def test_iter_list_follows_next(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(
        responses.POST,
        url("crm.category.list"),
        json=ok_json({"categories": [{"id": i} for i in range(50)]}, total=120, next=50),
    )
    rsps.add(
        responses.POST,
        url("crm.category.list"),
        json=ok_json({"categories": [{"id": i} for i in range(50, 100)]}, total=120, next=100),
    )
    rsps.add(
        responses.POST,
        url("crm.category.list"),
        json=ok_json({"categories": [{"id": i} for i in range(100, 120)]}, total=120),
    )
    client = make_client(clock)
    rows = client.iter_list("crm.category.list", {"entityTypeId": 2}, result_key="categories")
    assert client.requests_made == 0  # lazy
    assert [r["id"] for r in rows] == list(range(120))
    starts = [sent(c.request)["start"] for c in rsps.calls]
    assert starts == [0, 50, 100]
    assert all(sent(c.request)["entityTypeId"] == 2 for c in rsps.calls)


def test_iter_list_plain_list_result_and_empty_php_map(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("crm.status.list"), json=ok_json([{"STATUS_ID": "NEW"}]))
    rsps.add(responses.POST, url("crm.item.list"), json=ok_json([]))
    client = make_client(clock)
    assert list(client.iter_list("crm.status.list")) == [{"STATUS_ID": "NEW"}]
    assert list(client.iter_list("crm.item.list", {"entityTypeId": 2}, result_key="items")) == []


def test_iter_list_detects_a_next_that_does_not_advance(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("crm.status.list"), json=ok_json([{"ID": "1"}], next=50))
    rsps.add(responses.POST, url("crm.status.list"), json=ok_json([{"ID": "1"}], next=50))
    client = make_client(clock)
    with pytest.raises(CrmRejected) as caught:
        list(client.iter_list("crm.status.list"))
    assert caught.value.code == "PAGINATION_LOOP"


def test_iter_list_wrapped_result_without_result_key_is_explained(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    rsps.add(responses.POST, url("crm.item.list"), json=ok_json({"items": [{"id": 1}]}))
    client = make_client(clock)
    with pytest.raises(CrmRejected, match="result_key"):
        list(client.iter_list("crm.item.list"))


# -- fast paging --------------------------------------------------------------------------------------------------
def test_iter_list_fast_chains_50_pages_per_batch_and_stops_on_a_short_page(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    portal = FakePortal(list(range(1, 2561)))
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    rows = client.iter_list_fast("crm.deal.list", filter={"CLOSED": "N"}, select=["TITLE"])
    assert client.requests_made == 0  # lazy
    ids = [int(r["ID"]) for r in rows]
    assert ids == list(range(1, 2561))
    # first page alone, then 50 chained pages (2,500 rows) in one request, then the last 10 rows
    assert client.requests_made == 3
    assert portal.calls[0]["filter"] == {"CLOSED": "N", ">ID": 0}
    assert portal.calls[0]["select"] == ["TITLE", "ID"]
    first_batch = portal.batches[0]
    assert len(first_batch) == 50
    assert "filter[%3EID]=50&" in first_batch["p0"]
    assert "filter[%3EID]=$result[p0][49][ID]&" in first_batch["p1"]
    assert "filter[%3EID]=$result[p48][49][ID]&" in first_batch["p49"]
    assert "order[ID]=ASC" in first_batch["p0"] and "start=-1" in first_batch["p0"]
    assert "filter[CLOSED]=N" in first_batch["p0"]
    assert "filter[%3EID]=2550&" in portal.batches[1]["p0"]
    assert client.operating_seconds()["crm.deal.list"] == 2.0


def test_iter_list_fast_small_list_costs_one_request(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    portal = FakePortal(list(range(1, 31)))
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    assert len(list(client.iter_list_fast("crm.deal.list"))) == 30
    assert client.requests_made == 1 and portal.batches == []


def test_iter_list_fast_exactly_one_full_page_stops_on_the_empty_next_page(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    portal = FakePortal(list(range(1, 51)))
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    assert len(list(client.iter_list_fast("crm.deal.list"))) == 50
    assert client.requests_made == 2


def test_iter_list_fast_resumes_after_the_cursor_in_the_filter(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    portal = FakePortal(list(range(1, 101)))
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    ids = [int(r["ID"]) for r in client.iter_list_fast("crm.deal.list", filter={">ID": 90})]
    assert ids == list(range(91, 101))


def test_iter_list_fast_with_result_key_and_camel_case_row_ids(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    portal = FakePortal(list(range(1, 121)), result_key="tasks", row_key="id")
    install(rsps, portal, "tasks.task.list")
    client = make_client(clock)
    rows = list(client.iter_list_fast("tasks.task.list", select=["ID", "TITLE"], result_key="tasks"))
    assert [int(r["id"]) for r in rows] == list(range(1, 121))
    assert "filter[%3EID]=$result[p0][tasks][49][id]&" in portal.batches[0]["p1"]
    assert "select[0]=ID&select[1]=TITLE" in portal.batches[0]["p0"]


def test_iter_list_fast_detects_a_portal_that_ignores_the_cursor(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    portal = FakePortal(list(range(1, 200)), honour_filter=False)
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    rows = client.iter_list_fast("crm.deal.list")
    with pytest.raises(CrmRejected) as caught:
        list(rows)
    assert caught.value.code == "PAGINATION_LOOP"
    assert client.requests_made == 2


def test_iter_list_fast_waits_out_an_operating_limit_inside_a_batch_without_losing_rows(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    blocked = {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."}
    portal = FakePortal(list(range(1, 701)), command_failures={(0, "p5"): blocked})
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    ids = [int(r["ID"]) for r in client.iter_list_fast("crm.deal.list")]
    assert ids == list(range(1, 701))  # no gap, no duplicate
    # pages p0..p4 of the first batch were used; the second batch resumes after their last id
    assert "filter[%3EID]=300&" in portal.batches[1]["p0"]
    # Held until the reset time the batch's successful pages reported (+1 s pad), no backoff on top.
    assert clock.sleeps == [pytest.approx(91.0)]
    assert client.retries == 1


def test_iter_list_fast_raises_a_non_retryable_command_error(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    denied = {"error": "ACCESS_DENIED", "error_description": "Access denied."}
    portal = FakePortal(list(range(1, 701)), command_failures={(0, "p2"): denied})
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock)
    seen: list[int] = []
    with pytest.raises(CrmError) as caught:
        for row in client.iter_list_fast("crm.deal.list"):
            seen.append(int(row["ID"]))
    assert not caught.value.retryable
    assert seen == list(range(1, 151))  # first page + p0 + p1, nothing silently skipped after


def test_iter_list_fast_gives_up_after_max_attempts_without_progress(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    broken = {"error": "INTERNAL_SERVER_ERROR", "error_description": ""}
    portal = FakePortal(list(range(1, 701)), command_failures={(n, "p0"): broken for n in range(10)})
    install(rsps, portal, "crm.deal.list")
    client = make_client(clock, max_attempts=3)
    with pytest.raises(TransientCrmError):
        list(client.iter_list_fast("crm.deal.list"))
    assert len(portal.batches) == 3


def test_iter_list_fast_refuses_parameters_it_manages(clock: FakeClock) -> None:
    client = make_client(clock)
    with pytest.raises(ValueError):
        client.iter_list_fast("crm.deal.list", params={"order": {"ID": "DESC"}})
    with pytest.raises(ValueError):
        client.iter_list_fast("crm.deal.list", params={"START": 0})
    with pytest.raises(ValueError):
        client.iter_list_fast("crm.deal.list", filter={">ID": "abc"})


def test_iter_list_fast_user_get_uses_sort_and_order_strings(rsps: responses.RequestsMock, clock: FakeClock) -> None:
    rsps.add(responses.POST, url("user.get"), json=ok_json([{"ID": "1"}, {"ID": "2"}]))
    client = make_client(clock)
    assert [r["ID"] for r in client.iter_list_fast("user.get", filter={"ACTIVE": True})] == ["1", "2"]
    body = sent(rsps.calls[0].request)
    assert body["sort"] == "ID" and body["order"] == "ASC" and body["start"] == 0  # the first page counts what is left
    assert body["filter"] == {"ACTIVE": True, ">ID": 0}


def test_a_write_batch_is_repeated_only_when_the_portal_refused_it(
    rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    ok = {"result": {"result": {"t": {"task": {"id": "1"}}}, "result_error": [], "result_total": [],
                     "result_next": [], "result_time": []}, "time": {}}
    limit = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
    # refused by the bucket: nothing ran, so repeating the write is safe
    rsps.add(responses.POST, url("batch"), json=limit, status=503)
    rsps.add(responses.POST, url("batch"), json=ok)
    client = make_client(clock)
    assert client.batch({"t": ("tasks.task.add", {"fields": {"TITLE": "x"}})}, idempotent=False).ok
    assert client.requests_made == 2
    # a 500 may have run the writes: raised at once, for the caller to look in the CRM
    rsps.reset()
    rsps.add(responses.POST, url("batch"), json={"error": "INTERNAL_SERVER_ERROR", "error_description": ""}, status=500)
    with pytest.raises(TransientCrmError):
        client.batch({"t": ("tasks.task.add", {"fields": {"TITLE": "x"}})}, idempotent=False)
    assert client.requests_made == 3
    # the same failure on a read batch is simply retried
    rsps.add(responses.POST, url("batch"), json={"error": "INTERNAL_SERVER_ERROR", "error_description": ""}, status=500)
    rsps.add(responses.POST, url("batch"), json=ok)
    assert client.batch({"t": ("tasks.task.get", {"taskId": 1})}).ok
    assert client.requests_made == 5
