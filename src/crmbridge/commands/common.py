"""What every CLI command shares: settings, the client, the cache, the console and how errors are shown."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from crmbridge.cache.store import Cache, open_cache
from crmbridge.config import Settings, load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client, validate_webhook_url
from crmbridge.connectors.bitrix24.limiter import bucket_file
from crmbridge.connectors.bitrix24.app import authorization_server, effective_connector, oauth_auth
from crmbridge.errors import CacheError, ConfigError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


class CliState:
    """Options given before the command (`crmbridge --debug sync`)."""

    debug: bool = False


state = CliState()


def settings() -> Settings:
    return load_settings()


__all__ = ["authorization_server", "client_from", "effective_connector", "oauth_auth"]


def client_from(settings: Settings, webhook_url: str | None = None) -> Bitrix24Client:
    """The client for the configured portal; the URL is validated before any request or file write.

    A connected OAuth application (`crmbridge connect`, tokens in the cache) is preferred over the
    inbound webhook: only its writes carry `auth_connector`, so they are not queued back as offline events.
    """
    options: dict[str, Any] = {
        "rate": settings.bitrix24_rate,
        "burst": settings.bitrix24_burst,
        "operating_limit": settings.bitrix24_operating_limit,
        "max_attempts": settings.bitrix24_max_attempts,
        # a restart right after a burst must not draw 503: the bucket's level is kept beside the cache
        "bucket": bucket_file(settings.cache_path),
    }
    if webhook_url:
        return Bitrix24Client(validate_webhook_url(webhook_url), **options)
    auth = oauth_auth(settings)
    if auth is not None:
        return Bitrix24Client(auth=auth, **options)
    url = settings.bitrix24_webhook_url.get_secret_value() if settings.bitrix24_webhook_url else None
    if not url:
        raise ConfigError(
            "CRMBRIDGE_BITRIX24_WEBHOOK_URL is not set and no Bitrix24 application is connected",
            hint="put your portal's inbound webhook URL (https://<portal>/rest/<user>/<code>/) in .env, "
            "or set CRMBRIDGE_BITRIX24_CLIENT_ID / _CLIENT_SECRET and run `crmbridge connect`, "
            "or run `make demo` to try the built-in sandbox portal",
        )
    return Bitrix24Client(validate_webhook_url(url), **options)


def crm_client(settings: Settings) -> Any:
    """The client of the configured CRM (CRMBRIDGE_CRM): Bitrix24Client or AmoCRMClient."""
    if settings.crm == "amocrm":
        from crmbridge.connectors.registry import amocrm_client_from

        return amocrm_client_from(settings)
    return client_from(settings)


@contextmanager
def cache(settings: Settings, *, create: bool = False, path: Path | None = None) -> Iterator[Cache]:
    """The cache file of one command (CRMBRIDGE_CACHE_PATH, or `path`), opened and migrated, closed at the end.

    Commands that only read it (create=False) refuse a missing file with a clear error instead of creating
    an empty one; a cache of another CRM than CRMBRIDGE_CRM is refused.
    """
    where = path or settings.cache_path
    if not create and str(where) != ":memory:" and not Path(where).exists():
        raise CacheError(
            f"there is no cache at {where}",
            hint="run `crmbridge sync` first, or point CRMBRIDGE_CACHE_PATH at the file sync writes",
        )
    opened = open_cache(where)
    try:
        opened.account.check(settings.crm)  # a cache of the other CRM is refused before anything reads it as this one
        yield opened
    finally:
        opened.close()


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")


def print_json_list(payload: dict[str, Any], name: str, items: Iterable[Any]) -> None:
    """`print_json({**payload, name: list(items)})` written as it goes, one item a line: a long list (45,000
    violations) is neither held twice as text nor indented by the pure-Python encoder (seconds at that size)."""
    head = json.dumps({**payload, name: []}, ensure_ascii=False, indent=2, default=str)
    opening = head.rindex("[]")  # the list is the last key: everything before its "[]" is printed as is
    write = sys.stdout.write
    write(head[:opening] + "[")
    encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
    written = False
    batch: list[str] = []
    for item in itertools.chain(items, [None]):
        if item is not None:
            batch.append(encode(item))
        if batch and (item is None or len(batch) == 1000):
            write((",\n    " if written else "\n    ") + ",\n    ".join(batch))
            written, batch = True, []
    write(("\n  " if written else "") + head[opening + 1:] + "\n")
