"""The sandbox's OAuth application: token server with rotation, app-context rules, event bindings, the offline queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox.app import message_id, offline_event_data


@pytest.fixture
def p() -> Iterator[SandboxPortal]:
    with SandboxPortal(deals=30, seed=5, limits=False) as portal:
        yield portal


def token(p: SandboxPortal, **params: str) -> requests.Response:
    query = {"client_id": p.app.client_id, "client_secret": p.app.client_secret, **params}
    return requests.get(p.app.oauth_url + "oauth/token/", params=query, timeout=10)


def connect(p: SandboxPortal) -> dict[str, Any]:
    answer = token(p, grant_type="authorization_code", code=p.app.authorization_code())
    assert answer.status_code == 200
    return answer.json()


def rest(p: SandboxPortal, pair: dict[str, Any], method: str, connector: str | None = "crmbridge",
         **params: Any) -> requests.Response:
    body = {**params, "auth": pair["access_token"]}
    if connector is not None:
        body["auth_connector"] = connector
    return requests.post(pair["client_endpoint"] + method, json=body, timeout=10)


def test_code_exchange_answers_the_documented_fields_and_a_code_works_once(p: SandboxPortal) -> None:
    code = p.app.authorization_code()
    first = token(p, grant_type="authorization_code", code=code)
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"access_token", "client_endpoint", "domain", "expires_in", "member_id", "refresh_token",
                         "scope", "server_endpoint", "status"}
    assert body["client_endpoint"] == f"http://127.0.0.1:{p.port}/rest/" and body["member_id"] == p.member_id
    again = token(p, grant_type="authorization_code", code=code)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    wrong = requests.get(p.app.oauth_url + "oauth/token/", params={
        "grant_type": "authorization_code", "client_id": p.app.client_id, "client_secret": "nope", "code": "x"})
    assert wrong.json()["error"] == "invalid_client"


def test_refresh_rotates_and_a_used_refresh_token_is_refused(p: SandboxPortal) -> None:
    pair = connect(p)
    fresh = token(p, grant_type="refresh_token", refresh_token=pair["refresh_token"]).json()
    assert {"expires", "user_id"} <= set(fresh) and fresh["refresh_token"] != pair["refresh_token"]
    reused = token(p, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert (p.app.calls.refresh_token, p.app.calls.refused) == (2, 1)
    # the previous access token went with the rotation; the new one works
    assert rest(p, pair, "crm.deal.get", id=1).json()["error"] == "NO_AUTH_FOUND"
    assert rest(p, fresh, "crm.deal.get", id=1).json()["result"]["ID"] == "1"
    p.app.expire_access_tokens()
    expired = rest(p, fresh, "crm.deal.get", id=1)
    assert (expired.status_code, expired.json()["error"]) == (401, "expired_token")


def test_authorize_page_redirects_to_the_apps_redirect_uri() -> None:
    with SandboxPortal(deals=5, limits=False, app_options={"redirect_uri": "https://app.example/handler/"}) as p:
        answer = requests.get(f"http://127.0.0.1:{p.port}/oauth/authorize/",
                              params={"client_id": p.app.client_id, "state": "s1"}, allow_redirects=False)
        assert answer.status_code == 302
        location = answer.headers["Location"]
        assert location.startswith("https://app.example/handler/?code=") and "state=s1" in location
        assert f"member_id={p.member_id}" in location
        unknown = requests.get(f"http://127.0.0.1:{p.port}/oauth/authorize/", params={"client_id": "other"})
        assert unknown.status_code == 400


def test_a_webhook_gets_wrong_auth_type_for_every_event_method(p: SandboxPortal) -> None:
    for method in ("event.bind", "event.get", "event.unbind", "event.offline.get", "event.offline.clear",
                   "event.offline.error", "event.offline.list"):
        answer = requests.post(p.webhook_url + method, json={"event": "ONCRMDEALUPDATE", "process_id": "x"})
        assert (answer.status_code, answer.json()["error"]) == (403, "WRONG_AUTH_TYPE"), method
    # feature.get is not an event method: a webhook may ask
    assert requests.post(p.webhook_url + "feature.get", json={"CODE": "rest_offline_extended"}).json()["result"] == {
        "value": "Y"}


def test_event_bind_get_unbind_as_documented(p: SandboxPortal) -> None:
    pair = connect(p)
    assert rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline").json()["result"] is True
    duplicate = rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline").json()
    assert duplicate == {"error": "ERROR_CORE", "error_description": "Unable to set event handler: Handler already binded"}
    assert rest(p, pair, "event.bind", event="ONNOSUCHEVENT", event_type="offline").json()["error"] == \
        "ERROR_EVENT_NOT_FOUND"
    assert rest(p, pair, "event.bind", event="ONOFFLINEEVENT", event_type="offline").json()["error"] == \
        "ERROR_ARGUMENT"
    assert rest(p, pair, "event.bind", event="ONCRMDEALADD").json()["error"] == "ERROR_ARGUMENT"  # online needs handler
    assert rest(p, pair, "event.bind", event="ONCRMDEALADD", handler="https://app.example/h/").json()["result"] is True
    handlers = rest(p, pair, "event.get").json()["result"]
    assert {"event": "ONCRMDEALUPDATE", "connector_id": "crmbridge", "offline": 1} in handlers
    assert {"event": "ONCRMDEALADD", "handler": "https://app.example/h/", "auth_type": "0", "offline": 0} in handlers
    # unbinding an offline handler names the connector through the request's auth_connector
    assert rest(p, pair, "event.unbind", connector="other", event="ONCRMDEALUPDATE",
                event_type="offline").json()["result"] == {"count": 0}
    assert rest(p, pair, "event.unbind", event="ONCRMDEALUPDATE", event_type="offline").json()["result"] == {
        "count": 1}


def test_offline_binding_needs_an_administrator_and_a_connector_needs_the_plan() -> None:
    with SandboxPortal(deals=5, limits=False, app_options={"admin": False}) as p:
        pair = connect(p)
        denied = rest(p, pair, "event.bind", connector=None, event="ONCRMDEALUPDATE", event_type="offline").json()
        assert denied["error"] == "ACCESS_DENIED" and "administrator" in denied["error_description"]
    with SandboxPortal(deals=5, limits=False, app_options={"features": {"rest_auth_connector": False,
                                                                         "rest_offline_extended": False}}) as p:
        pair = connect(p)
        assert rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline").json()["error"] == \
            "WRONG_LICENSE"
        assert rest(p, pair, "event.bind", connector=None, event="ONCRMDEALUPDATE",
                    event_type="offline").json()["result"] is True
        refused = rest(p, pair, "event.offline.get", connector=None, clear=0).json()
        assert refused["error"] == "WRONG_LICENSE" and "extended offline" in refused["error_description"]


def test_the_queue_keeps_the_latest_state_per_record_and_reserved_batches_apart(p: SandboxPortal) -> None:
    pair = connect(p)
    rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline")
    p.update_deal(3, {"TITLE": "a"})
    p.update_deal(3, {"TITLE": "b"})
    p.update_deal(4, {"TITLE": "c"})
    queue = p.app.queue()
    assert [r.data for r in queue] == [{"FIELDS": {"ID": "3"}}, {"FIELDS": {"ID": "4"}}]  # 3 kept once
    assert queue[0].message_id == message_id("ONCRMDEALUPDATE", offline_event_data("ONCRMDEALUPDATE", 3))
    got = rest(p, pair, "event.offline.get", clear=0, limit=1).json()["result"]
    process_id = got["process_id"]
    assert len(process_id) == 32 and [e["EVENT_DATA"] for e in got["events"]] == [{"FIELDS": {"ID": "3"}}]
    assert set(got["events"][0]) == {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID"}
    # a change of a reserved record queues a new record instead of touching the reserved one
    p.update_deal(3, {"TITLE": "d"})
    listing = rest(p, pair, "event.offline.list").json()
    assert listing["total"] == 3
    assert [(row["EVENT_DATA"]["FIELDS"]["ID"], row["PROCESS_ID"]) for row in listing["result"]] == [
        ("3", process_id), ("4", ""), ("3", "")]
    # the same process_id reads the unconfirmed batch again; another reader gets other records
    assert rest(p, pair, "event.offline.get", clear=0, process_id=process_id).json()["result"]["events"] == \
        got["events"]
    other = rest(p, pair, "event.offline.get", clear=0).json()["result"]
    assert {e["EVENT_DATA"]["FIELDS"]["ID"] for e in other["events"]} == {"3", "4"} and \
        other["process_id"] != process_id
    assert rest(p, pair, "event.offline.clear", process_id=process_id, id=[got["events"][0]["ID"]]).json()[
        "result"] is True
    assert rest(p, pair, "event.offline.clear", process_id=other["process_id"]).json()["result"] is True
    assert p.app.queue() == []
    assert rest(p, pair, "event.offline.clear").json()["error"] == "ERROR_ARGUMENT"  # process_id is required


def test_marking_errors_and_the_connectors_own_changes(p: SandboxPortal) -> None:
    pair = connect(p)
    rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline")
    rest(p, pair, "crm.deal.update", id=5, fields={"TITLE": "the bridge"})  # own write, own connector: not queued
    rest(p, pair, "crm.deal.update", connector=None, id=6, fields={"TITLE": "no connector"})
    requests.post(p.webhook_url + "crm.deal.update", json={"id": 7, "fields": {"TITLE": "webhook"},
                                                            "auth_connector": "crmbridge"})
    assert sorted(r.data["FIELDS"]["ID"] for r in p.app.queue()) == ["6", "7"]
    got = rest(p, pair, "event.offline.get", clear=0).json()["result"]
    bad = got["events"][0]
    rest(p, pair, "event.offline.error", process_id=got["process_id"], message_id=[bad["MESSAGE_ID"]])
    rest(p, pair, "event.offline.clear", process_id=got["process_id"])
    left = p.app.queue()
    assert [(r.id, r.error, r.process_id) for r in left] == [(int(bad["ID"]), 1, "")]
    assert rest(p, pair, "event.offline.get", clear=0).json()["result"]["events"] == []
    assert [e["ID"] for e in rest(p, pair, "event.offline.get", clear=0, error=1).json()["result"]["events"]] == [
        bad["ID"]]


def test_offline_get_validates_its_arguments(p: SandboxPortal) -> None:
    pair = connect(p)
    assert rest(p, pair, "event.offline.get", limit=0).json()["error_description"] == "Value must be positive integer"
    assert "operation not allowed" in rest(p, pair, "event.offline.get", filter={"!ID": 1}).json()[
        "error_description"]
    assert "field not allowed" in rest(p, pair, "event.offline.get", filter={"PROCESS_ID": "x"}).json()[
        "error_description"]
    assert rest(p, pair, "event.offline.clear", process_id="x", message_id=["short"]).json()["error"] == \
        "ERROR_ARGUMENT"


def test_online_handlers_are_called_with_the_applications_auth(p: SandboxPortal) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qsl

    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append(dict(parse_qsl(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler = f"http://127.0.0.1:{server.server_address[1]}/events"
    try:
        pair = connect(p)
        assert rest(p, pair, "event.bind", connector=None, event="ONCRMDEALUPDATE", handler=handler).json()["result"]
        assert rest(p, pair, "event.bind", event="ONCRMDEALUPDATE", event_type="offline").json()["result"]
        p.update_deal(3, {"TITLE": "renamed by a manager"}, user_id=2)  # a person's change
        rest(p, pair, "crm.deal.update", id=4, fields={"TITLE": "by the app"})  # the app's own, with its connector
        assert p.app.wait_handlers(10)
        assert sorted(call["data[FIELDS][ID]"] for call in received) == ["3", "4"]  # online: every change, once
        assert [record.data["FIELDS"]["ID"] for record in p.app.queue()] == ["3"]  # offline: not the app's own
        call = received[0]
        assert call["event"] == "ONCRMDEALUPDATE" and call["auth[application_token]"] == p.app.application_token
        assert call["auth[member_id]"] == p.member_id and call["auth[domain]"] == f"127.0.0.1:{p.port}"
        assert call["auth[status]"] == "L" and call["auth[client_endpoint]"] == f"http://127.0.0.1:{p.port}/rest/"
        handed = {"access_token": call["auth[access_token]"], "client_endpoint": call["auth[client_endpoint]"]}
        assert rest(p, handed, "crm.deal.get", id=3).json()["result"]["TITLE"] == "renamed by a manager"
        assert rest(p, pair, "crm.deal.get", id=3).status_code == 200  # the app's own pair still works
        assert [d.status for d in p.app.handler_deliveries(handler)] == [200, 200]
        assert rest(p, pair, "event.unbind", event="ONCRMDEALUPDATE", handler=handler).json()["result"]["count"] == 1
        p.update_deal(3, {"TITLE": "after unbind"})
        assert p.app.wait_handlers(10) and len(received) == 2
    finally:
        server.shutdown()
        server.server_close()
