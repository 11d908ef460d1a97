"""Envelope parsing and the error-mapping table of the Bitrix24 client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crmbridge.connectors.bitrix24.envelope import classify_error, infer_scope, parse_batch, parse_call
from crmbridge.errors import (
    AuthError,
    AuthExpired,
    BatchCommandError,
    CrmError,
    CrmRejected,
    OperatingTimeExceeded,
    RateLimited,
    ScopeError,
    TransientCrmError,
)

NOW = 1_700_000_000.0


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def test_success_envelope_with_list_fields_and_time() -> None:
    time_block = {"start": 1.0, "finish": 1.5, "duration": 0.5, "operating": 3.3, "operating_reset_at": NOW + 30}
    answer = parse_call(
        "crm.deal.list",
        200,
        _body({"result": [{"ID": "1"}], "total": 6, "next": 50, "time": time_block}),
        "application/json",
        now=NOW,
    )
    assert answer.result == [{"ID": "1"}]
    assert (answer.total, answer.next) == (6, 50)
    assert answer.time["operating"] == 3.3


def test_success_envelope_without_list_fields() -> None:
    answer = parse_call("crm.deal.update", 200, _body({"result": True}), "application/json", now=NOW)
    assert answer.result is True
    assert answer.total is None and answer.next is None and answer.time == {}


def test_legacy_empty_error_with_400_is_rejected_with_the_documented_one_line_message() -> None:
    with pytest.raises(CrmRejected) as caught:
        parse_call(
            "crm.deal.list",
            400,
            _body({"error": "", "error_description": "Parameter 'filter' must be array."}),
            "application/json",
            now=NOW,
        )
    error = caught.value
    assert str(error) == "crm.deal.list: HTTP 400 : Parameter 'filter' must be array."
    assert (error.method, error.status, error.code, error.description) == (
        "crm.deal.list",
        400,
        "",
        "Parameter 'filter' must be array.",
    )
    assert not error.retryable


def test_error_core_description_is_cleaned_to_one_line() -> None:
    with pytest.raises(CrmRejected) as caught:
        parse_call(
            "tasks.task.add",
            400,
            _body({"error": "ERROR_CORE", "error_description": "Task title is not specified<br>\nand more"}),
            "application/json",
            now=NOW,
        )
    assert str(caught.value) == "tasks.task.add: HTTP 400 ERROR_CORE: Task title is not specified and more"


@pytest.mark.parametrize("status", [200, 500, 502, 503, 504])
def test_html_body_is_transient(status: int) -> None:
    with pytest.raises(TransientCrmError) as caught:
        parse_call("batch", status, b"<html><body>502 Bad Gateway</body></html>", "text/html", now=NOW)
    assert caught.value.status == status
    assert "text/html" in str(caught.value)
    assert caught.value.retryable


def test_empty_body_is_transient() -> None:
    with pytest.raises(TransientCrmError):
        parse_call("crm.deal.get", 502, b"", "", now=NOW)


def test_html_404_fails_fast_naming_the_setting() -> None:
    with pytest.raises(CrmRejected) as caught:
        parse_call("crm.deal.get", 404, b"<html>Not Found</html>", "text/html", now=NOW)
    assert "CRMBRIDGE_BITRIX24_WEBHOOK_URL" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "QUERY_LIMIT_EXCEEDED", RateLimited),
        (429, "OPERATION_TIME_LIMIT", OperatingTimeExceeded),
        (401, "NO_AUTH_FOUND", AuthError),
        (401, "invalid_token", AuthError),
        (401, "INVALID_CREDENTIALS", AuthError),
        (403, "INVALID_CREDENTIALS", AuthError),
        (401, "expired_token", AuthExpired),
        (401, "insufficient_scope", ScopeError),  # the status differs between sources; the code decides
        (403, "insufficient_scope", ScopeError),
        (500, "INTERNAL_SERVER_ERROR", TransientCrmError),
        (500, "ERROR_UNEXPECTED_ANSWER", TransientCrmError),
        (502, "", TransientCrmError),
        (504, "SOMETHING", TransientCrmError),
        (400, "", CrmRejected),
        (400, "ERROR_CORE", CrmRejected),
        (404, "ERROR_METHOD_NOT_FOUND", CrmRejected),
        (403, "ACCESS_DENIED", CrmRejected),
        (503, "OVERLOAD_LIMIT", CrmRejected),  # a manual block: retrying cannot help
        (401, "OVERLOAD_LIMIT", CrmRejected),
        (400, "INVALID_REQUEST", CrmRejected),
        (429, "", OperatingTimeExceeded),
        (401, "SOMETHING_NEW", AuthError),
        (418, "", CrmRejected),
    ],
)
def test_error_mapping_table(status: int, code: str, expected: type[CrmError]) -> None:
    with pytest.raises(CrmError) as caught:
        parse_call("crm.deal.list", status, _body({"error": code, "error_description": "text"}), "", now=NOW)
    error = caught.value
    assert type(error) is expected
    assert (error.method, error.status, error.code, error.description) == ("crm.deal.list", status, code, "text")
    assert error.retryable == (expected in (RateLimited, OperatingTimeExceeded, TransientCrmError))
    assert "\n" not in str(error)


def test_operating_limit_takes_reset_at_from_the_body_or_defaults_to_a_minute() -> None:
    with_reset = classify_error(
        "crm.deal.list",
        status=429,
        code="OPERATION_TIME_LIMIT",
        description="blocked",
        body={"error": "OPERATION_TIME_LIMIT", "time": {"operating_reset_at": NOW + 123}},
        now=NOW,
    )
    top_level = classify_error(
        "crm.deal.list",
        status=429,
        code="OPERATION_TIME_LIMIT",
        description="blocked",
        body={"operating_reset_at": NOW + 7},
        now=NOW,
    )
    without = classify_error("crm.deal.list", status=429, code="OPERATION_TIME_LIMIT", description="", now=NOW)
    assert isinstance(with_reset, OperatingTimeExceeded) and with_reset.reset_at == NOW + 123
    assert isinstance(top_level, OperatingTimeExceeded) and top_level.reset_at == NOW + 7
    assert isinstance(without, OperatingTimeExceeded) and without.reset_at == NOW + 60
    assert with_reset.hint and "unblocks" in with_reset.hint


@pytest.mark.parametrize(
    ("method", "scope"),
    [("crm.deal.list", "crm"), ("tasks.task.add", "task"), ("im.notify.system.add", "im"), ("user.get", "user")],
)
def test_scope_errors_name_the_missing_scope(method: str, scope: str) -> None:
    error = classify_error(method, status=401, code="insufficient_scope", description="", now=NOW)
    assert isinstance(error, ScopeError)
    assert f"'{scope}'" in str(error)
    assert infer_scope(method) == scope


def test_scope_error_for_unknown_family_still_has_a_hint() -> None:
    error = classify_error("disk.folder.get", status=403, code="insufficient_scope", description="", now=NOW)
    assert isinstance(error, ScopeError) and error.hint
    assert infer_scope("disk.folder.get") is None


def test_auth_error_hint_names_the_setting() -> None:
    error = classify_error(
        "crm.deal.list", status=401, code="NO_AUTH_FOUND", description="Wrong authorization data", now=NOW
    )
    assert "CRMBRIDGE_BITRIX24_WEBHOOK_URL" in str(error)


def test_descriptions_are_redacted() -> None:
    error = classify_error("x.y", status=400, code="X", description="bad url /rest/1/leakedcode/x", now=NOW)
    assert "leakedcode" not in str(error) and "/rest/1/***/x" in str(error)


def test_batch_envelope_with_results_errors_and_empty_maps_as_lists() -> None:
    outer: dict[str, Any] = {
        "result": {"a": [{"ID": "1"}], "b": {"ID": "2"}},
        "result_error": {
            "c": {"error": "insufficient_scope", "error_description": ""},
            "d": {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked"},
            "e": {"error": "", "error_description": "Not found"},
            "f": {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"},
            "g": {"error": "INTERNAL_SERVER_ERROR", "error_description": ""},
        },
        "result_total": {"a": 1},
        "result_next": [],
        "result_time": {"a": {"operating": 1.5, "operating_reset_at": NOW + 5}},
    }
    methods = {k: "crm.deal.list" for k in "abcdefg"}
    methods["c"] = "tasks.task.list"
    batch = parse_batch(outer, methods, halt=False, now=NOW)
    assert batch.results == {"a": [{"ID": "1"}], "b": {"ID": "2"}}
    assert batch.totals == {"a": 1} and batch.nexts == {}
    assert batch.times["a"]["operating"] == 1.5
    assert isinstance(batch.errors["c"], ScopeError) and "'task'" in str(batch.errors["c"])
    assert isinstance(batch.errors["d"], OperatingTimeExceeded) and batch.errors["d"].reset_at == NOW + 60
    assert isinstance(batch.errors["e"], BatchCommandError) and batch.errors["e"].command == "e"
    assert str(batch.errors["e"]) == "crm.deal.list [batch e]: Not found"
    assert isinstance(batch.errors["f"], RateLimited)
    assert isinstance(batch.errors["g"], TransientCrmError)
    assert not batch.ok


def test_batch_all_empty_maps_arrive_as_lists() -> None:
    outer: dict[str, Any] = {"result": [], "result_error": [], "result_total": [], "result_next": [], "result_time": []}
    batch = parse_batch(outer, {}, halt=False, now=NOW)
    assert batch.ok and batch.results == {} and batch.totals == {}


def test_batch_with_numeric_keys_returned_as_a_json_list() -> None:
    outer: dict[str, Any] = {"result": [["r0"], ["r1"]], "result_error": [], "result_total": [1, 1]}
    batch = parse_batch(outer, {"0": "crm.deal.list", "1": "crm.deal.list"}, halt=False, now=NOW)
    assert batch.results == {"0": ["r0"], "1": ["r1"]}
    assert batch.totals == {"0": 1, "1": 1}


def test_batch_commands_not_run_after_halt_are_reported_not_dropped() -> None:
    outer: dict[str, Any] = {
        "result": {"a": 1},
        "result_error": {"b": {"error": "ERROR_CORE", "error_description": "bad"}},
    }
    batch = parse_batch(outer, {"a": "m.x", "b": "m.y", "c": "m.z"}, halt=True, now=NOW)
    assert batch.results == {"a": 1}
    assert set(batch.errors) == {"b", "c"}
    assert isinstance(batch.errors["c"], BatchCommandError) and "halted" in str(batch.errors["c"])
