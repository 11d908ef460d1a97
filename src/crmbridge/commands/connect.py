"""`crmbridge connect`: authorize crmbridge as the portal's local OAuth application, keep its tokens, bind offline events."""

from __future__ import annotations

import importlib
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import typer

from crmbridge.commands import common
from crmbridge.config import Settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.oauth import (
    CRM,
    AuthorizationServer,
    OAuthAuth,
    Redirect,
    new_state,
    parse_redirect,
    portal_url,
)
from crmbridge.connectors.bitrix24.offline import OfflineSetup, bind_offline_events
from crmbridge.connectors.oauth import OAuthSession, TokenPair, TokenStore
from crmbridge.errors import ConfigError

#: the live_state key the daemon checks events' auth[member_id] against (docs/architecture.md, live bridge)
MEMBER_ID_STATE = "bitrix24.member_id"


def _portal_for_authorize(settings: Settings, store: TokenStore, given: str | None) -> str:
    if given:
        return portal_url(given)
    if settings.bitrix24_webhook_url:
        return portal_url(settings.bitrix24_webhook_url.get_secret_value())
    pair = store.current()
    if pair is not None and pair.details.get("client_endpoint"):
        return portal_url(str(pair.details["client_endpoint"]))
    raise ConfigError("crmbridge does not know your portal's address yet",
                      hint="pass it: crmbridge connect --portal https://example.bitrix24.ru")


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--listen {text!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8765") from None
    return (host or "127.0.0.1").strip("[]"), number


def catch_redirect(host: str, port: int, state: str, timeout: float, ready: threading.Event | None = None) -> Redirect:
    """Serve the application's redirect URI until Bitrix24 sends the browser there with a code (or time runs out)."""
    caught: list[Redirect] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # the request line holds the code

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            if "code" in params:
                caught.append(Redirect(params["code"], params.get("state"), params.get("domain"),
                                       params.get("member_id")))
                body = "crmbridge received the authorization. You can close this tab."
                status = 200
            else:
                body, status = "Waiting for Bitrix24's redirect with an authorization code.", 404
            data = f"<html><body><p>{body}</p></body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer((host, port), Handler)
    server.timeout = 0.5
    if ready is not None:
        ready.set()
    deadline = time.monotonic() + timeout
    try:
        while not caught:
            if time.monotonic() > deadline:
                raise ConfigError(f"no redirect from Bitrix24 arrived at http://{host}:{port}/ within {timeout:.0f} s",
                                  hint="open the address above in a browser signed in to the portal as an "
                                  "administrator; the application's redirect URI must point at --listen")
            server.handle_request()
    finally:
        server.server_close()
    redirect = caught[0]
    if redirect.state != state:
        raise ConfigError("the redirect's state does not match the one crmbridge sent (a stale or forged link)",
                          hint="run `crmbridge connect` again and use the new address")
    return redirect


def _obtain_code(settings: Settings, server: AuthorizationServer, store: TokenStore, *, code: str | None,
                 portal: str | None, listen: str | None, timeout: float) -> Redirect:
    if code:
        return parse_redirect(code)
    state = new_state()
    url = server.authorize_url(_portal_for_authorize(settings, store, portal), state)
    common.err_console.print("Open this address in a browser signed in to the portal as an administrator:")
    common.err_console.print(f"  {url}", soft_wrap=True)
    if listen:
        host, port = _listen_address(listen)
        return catch_redirect(host, port, state, timeout)
    text = typer.prompt("Then paste the address Bitrix24 sent the browser to (or just its code); it expires in 30 s")
    redirect = parse_redirect(text)
    if redirect.state is not None and redirect.state != state:
        raise ConfigError("the pasted address is from another authorization (its state differs)",
                          hint="paste the address of the authorization you just opened")
    return redirect


def _remember_member_id(settings: Settings, member_id: str) -> None:
    """The daemon accepts events only from this portal: record its member_id (the first connect wins)."""
    from crmbridge.live.inbox import Inbox

    with Inbox(settings.cache_path) as inbox:
        stored = inbox.set_state(MEMBER_ID_STATE, member_id, only_if_unset=True)
    if stored != member_id:
        raise ConfigError(f"this cache serves another portal (member_id {stored[:8]}…), not {member_id[:8]}…",
                          hint="point CRMBRIDGE_CACHE_PATH at a new file for this portal")


def bind_events(settings: Settings, store: TokenStore, server: AuthorizationServer) -> OfflineSetup:
    """Bind the offline events with the configured connector and record how they are bound."""
    connector = settings.bitrix24_auth_connector
    client = Bitrix24Client(
        auth=OAuthAuth(OAuthSession(store, server.refresh), connector=connector),
        rate=settings.bitrix24_rate, burst=settings.bitrix24_burst,
        operating_limit=settings.bitrix24_operating_limit, max_attempts=settings.bitrix24_max_attempts,
    )
    with client:
        setup = bind_offline_events(client, connector)
    store.annotate({"offline": {"connector": setup.connector, "reserve": setup.reserve,
                                "events": sorted(set(setup.bound) | set(setup.already))}})
    return setup


def connect_bitrix24(settings: Settings, *, code: str | None, portal: str | None, listen: str | None,
                     events_only: bool, no_events: bool, timeout: float) -> tuple[TokenPair, OfflineSetup | None]:
    server = common.authorization_server(settings)
    store = TokenStore(settings.cache_path, CRM)
    if events_only:
        pair = store.require()
    else:
        redirect = _obtain_code(settings, server, store, code=code, portal=portal, listen=listen, timeout=timeout)
        grant = server.exchange_code(redirect.code)
        member_id = str(grant.details.get("member_id") or "")
        if not member_id:
            raise ConfigError("the authorization server's answer names no portal (member_id)",
                              hint=f"check CRMBRIDGE_BITRIX24_OAUTH_URL ({server.base})")
        if redirect.member_id and redirect.member_id != member_id:
            raise ConfigError("the code came from another portal than the one that answered",
                              hint="authorize again on your portal")
        current = store.current()  # ConfigError if the cache somehow holds several portals
        if current is not None and current.account != member_id:
            raise ConfigError(f"this cache is connected to another portal (member_id {current.account[:8]}…)",
                              hint="point CRMBRIDGE_CACHE_PATH at a new file for this portal")
        _remember_member_id(settings, member_id)
        pair = TokenStore(settings.cache_path, CRM, member_id).save(member_id, grant)
        store = TokenStore(settings.cache_path, CRM, member_id)
    setup = None if no_events else bind_events(settings, store, server)
    return store.require() if setup else pair, setup


def _report(pair: TokenPair, setup: OfflineSetup | None, settings: Settings) -> dict[str, Any]:
    endpoint = str(pair.details.get("client_endpoint", ""))
    return {
        "crm": CRM,
        "portal": urlsplit(endpoint).netloc,
        "member_id": pair.account,
        "cache": str(settings.cache_path),
        "offline": None if setup is None else {
            "connector": setup.connector, "confirmed_processing": setup.reserve,
            "bound": setup.bound, "already_bound": setup.already, "notes": setup.notes,
        },
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def connect(
        crm: str = typer.Option("bitrix24", "--crm", help="Which CRM: bitrix24 (a local server application)."),
        portal: str = typer.Option(None, "--portal", help="Your portal's address, e.g. https://example.bitrix24.ru"),
        code: str = typer.Option(None, "--code",
                                 help="An authorization code, or the whole address Bitrix24 redirected to."),
        listen: str = typer.Option(None, "--listen", metavar="HOST:PORT",
                                   help="Catch the redirect here (the application's redirect URI, e.g. 127.0.0.1:8765)."),
        events_only: bool = typer.Option(False, "--events-only",
                                         help="Only (re)bind the offline events, with the stored tokens."),
        no_events: bool = typer.Option(False, "--no-events", help="Store the tokens, bind no offline events."),
        timeout: float = typer.Option(300.0, "--timeout", help="Seconds --listen waits for the redirect."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Authorize crmbridge as the portal's OAuth application, store its tokens in the cache, bind offline events."""
        settings = common.settings()
        if crm != CRM:
            # another CRM's connector plugs in here: crmbridge.commands.connect_<crm>.run(settings, **options)
            try:
                module = importlib.import_module(f"crmbridge.commands.connect_{crm}")
            except ModuleNotFoundError:
                raise ConfigError(f"`crmbridge connect --crm {crm}` is not available",
                                  hint="use --crm bitrix24") from None
            module.run(settings, code=code, portal=portal, listen=listen, timeout=timeout, as_json=as_json)
            return
        if events_only and no_events:
            raise ConfigError("--events-only and --no-events exclude each other", hint="pass one of them")
        pair, setup = connect_bitrix24(settings, code=code, portal=portal, listen=listen, events_only=events_only,
                                       no_events=no_events, timeout=timeout)
        report = _report(pair, setup, settings)
        if as_json:
            common.print_json(report)
            return
        if not events_only:
            common.console.print(
                f"[green]✓[/green] connected to {report['portal']} as a local application "
                f"(member_id {pair.account[:8]}…); tokens stored in {settings.cache_path}")
        if setup is not None:
            named = f'connector "{setup.connector}"' if setup.connector else "no connector"
            common.console.print(
                f"[green]✓[/green] offline events bound ({named}): {len(setup.bound)} new, "
                f"{len(setup.already)} already bound; confirmed processing: {'yes' if setup.reserve else 'no'}")
            for note in setup.notes:
                common.console.print(f"  note: {note}")
            common.console.print(f"  `crmbridge serve` polls them every {settings.bitrix24_offline_poll_seconds:g} s.")
