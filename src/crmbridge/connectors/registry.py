"""Which connector serves which CRM: the client from the settings, its reader and syncer, its account snapshot."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

from crmbridge.cache.store import Cache
from crmbridge.config import Settings
from crmbridge.connectors.amocrm.client import AmoCRMClient
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.errors import ConfigError

CrmClient = Bitrix24Client | AmoCRMClient

#: the amoCRM settings a user must set, named in errors
AMOCRM_URL_HINT = ("put your account's address in .env as CRMBRIDGE_AMOCRM_BASE_URL=https://<subdomain>.amocrm.ru, "
                   "or run `crmbridge demo --crm amocrm` to try the sandbox account")


def rate_file(cache_path: Path | str) -> Path | None:
    """Where every crmbridge process of one cache (one account) keeps the shared 7 rps window."""
    if str(cache_path) == ":memory:":
        return None
    return Path(f"{cache_path}.amocrm-rate")


def amocrm_client_from(settings: Settings, *, base_url: str | None = None,
                       observer: Callable[[str, str], None] | None = None,
                       on_call: Callable[[str, str], None] | None = None) -> AmoCRMClient:
    """The client for the configured amoCRM account; URL and credentials are checked before any request."""
    from crmbridge.connectors.amocrm.limiter import FileRateWindow
    from crmbridge.connectors.amocrm.transport import LongLivedTokenAuth, validate_base_url

    url = base_url or settings.amocrm_base_url
    if not url:
        raise ConfigError("CRMBRIDGE_AMOCRM_BASE_URL is not set", hint=AMOCRM_URL_HINT)
    url = validate_base_url(url)
    if settings.amocrm_long_lived_token is not None:
        auth: Any = LongLivedTokenAuth(settings.amocrm_long_lived_token.get_secret_value())
    elif settings.amocrm_client_id and settings.amocrm_client_secret and settings.amocrm_redirect_uri:
        from crmbridge.connectors.amocrm.oauth import oauth_auth_from

        auth = oauth_auth_from(settings, url)
    else:
        raise ConfigError(
            "no amoCRM credentials: set CRMBRIDGE_AMOCRM_LONG_LIVED_TOKEN, or CRMBRIDGE_AMOCRM_CLIENT_ID, "
            "CRMBRIDGE_AMOCRM_CLIENT_SECRET and CRMBRIDGE_AMOCRM_REDIRECT_URI",
            hint="a private integration shows a long-lived token under Keys and scopes; an OAuth integration "
                 "then needs `crmbridge connect --crm amocrm --code CODE` once",
        )
    shared = rate_file(settings.cache_path)
    limiter = FileRateWindow(shared, settings.amocrm_rate) if shared is not None else None
    return AmoCRMClient(url, auth=auth, rate=settings.amocrm_rate, limiter=limiter,
                        max_attempts=settings.amocrm_max_attempts, observer=observer, on_call=on_call)


#: what a person must set when no Bitrix24 portal is configured
BITRIX24_MISSING_HINT = ("put your portal's inbound webhook URL (https://<portal>/rest/<user>/<code>/) in .env, "
                         "or set CRMBRIDGE_BITRIX24_CLIENT_ID / _CLIENT_SECRET and run `crmbridge connect`, "
                         "or run `make demo` to try the built-in sandbox portal")


def client_for(settings: Settings, *, observer: Callable[[str, str], None] | None = None,
               on_call: Callable[[str, str], None] | None = None, limiter: Any = None) -> CrmClient:
    """The client of the configured CRM (CRMBRIDGE_CRM), URL and credentials checked before any request.

    Bitrix24: a connected OAuth application (`crmbridge connect`, tokens in the cache) is preferred over the inbound
    webhook: only its writes carry `auth_connector`, so they are not queued back as offline events. Every process of
    one cache shares the portal's bucket (a file beside the cache) unless a `limiter` is given (the daemon's own).
    `observer(method, status)` sees each HTTP request, `on_call(method, status)` each method run (a batch's
    commands one by one)."""
    if settings.crm == "amocrm":
        return amocrm_client_from(settings, observer=observer, on_call=on_call)
    from crmbridge.connectors.bitrix24.app import oauth_auth
    from crmbridge.connectors.bitrix24.client import validate_webhook_url
    from crmbridge.connectors.bitrix24.limiter import bucket_file

    options: dict[str, Any] = {
        "rate": settings.bitrix24_rate, "burst": settings.bitrix24_burst,
        "operating_limit": settings.bitrix24_operating_limit, "max_attempts": settings.bitrix24_max_attempts,
        "observer": observer, "on_call": on_call,
    }
    if limiter is not None:
        options["limiter"] = limiter
    else:
        options["bucket"] = bucket_file(settings.cache_path)  # a restart right after a burst must not draw 503
    auth = oauth_auth(settings)
    if auth is not None:
        return Bitrix24Client(auth=auth, **options)
    url = settings.bitrix24_webhook_url.get_secret_value() if settings.bitrix24_webhook_url else None
    if not url:
        raise ConfigError("CRMBRIDGE_BITRIX24_WEBHOOK_URL is not set and no Bitrix24 application is connected",
                          hint=BITRIX24_MISSING_HINT)
    return Bitrix24Client(validate_webhook_url(url), **options)


def syncer_for(client: CrmClient, cache: Cache | Callable[[], AbstractContextManager[Cache]], *,
               overlap: timedelta = timedelta(minutes=5), progress: Any = None, refresh: timedelta | None = None,
               lock_wait: float | None = None, break_lock: bool = False, plan_entity_type: int | None = None) -> Any:
    """The Syncer of the client's CRM (same `run(full=...) -> SyncSummary` contract); `plan_entity_type` is the
    Bitrix24 smart process holding plans (bitrix24.yaml `plans_source`)."""
    locking: dict[str, Any] = {"break_lock": break_lock} | ({} if lock_wait is None else {"lock_wait": lock_wait})
    if isinstance(client, AmoCRMClient):
        from crmbridge.connectors.amocrm.reader import AmoCRMReader
        from crmbridge.sync_amocrm import REFERENCE_EVERY, AmoCRMSyncer

        every = refresh if refresh is not None else REFERENCE_EVERY
        return AmoCRMSyncer(AmoCRMReader(client), cache, overlap=overlap, progress=progress,
                            reference_every=every, clients_every=every, **locking)
    from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
    from crmbridge.sync import Syncer

    return Syncer(Bitrix24Reader(client), cache, overlap=overlap, progress=progress, plan_entity_type=plan_entity_type,
                  **locking)


def api_snapshot(client: CrmClient) -> Any:
    """The account's structure (pipelines, stages, fields, users) read from its API, in cache-row shape."""
    from crmbridge.mapping.portal import PortalSnapshot

    if isinstance(client, AmoCRMClient):
        from crmbridge.cache import amocrm_rows
        from crmbridge.connectors.amocrm.reader import AmoCRMReader

        reference = AmoCRMReader(client).reference_data()
        return PortalSnapshot.from_rows(
            map(amocrm_rows.pipeline_row, reference.pipelines),
            [row for pipeline in reference.pipelines for row in amocrm_rows.stage_rows(pipeline)],
            map(amocrm_rows.deal_field_row, reference.lead_fields),
            map(amocrm_rows.user_row, reference.users),
        )
    from crmbridge.cache import rows
    from crmbridge.connectors.bitrix24.reader import Bitrix24Reader

    reader = Bitrix24Reader(client)
    granted, _ = reader.check_scopes(required=())
    reference = reader.reference_data(departments="department" in granted)
    # the API's records go through the same conversions a sync would cache them with
    return PortalSnapshot.from_rows(
        map(rows.pipeline_row, reference.pipelines),
        [rows.stage_row(raw, category) for category, stages in reference.stages.items() for raw in stages],
        map(rows.deal_field_row, reference.deal_fields),
        map(rows.user_row, reference.users),
        map(rows.department_row, reference.departments or ()),
    )
