"""What every CLI command shares: settings, the client, the cache, the console and how errors are shown."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from crmbridge.cache.store import Cache, open_cache
from crmbridge.config import Settings, load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client, validate_webhook_url
from crmbridge.connectors.bitrix24.limiter import bucket_file
from crmbridge.connectors.bitrix24.app import authorization_server, effective_connector, oauth_auth
from crmbridge.errors import CacheError, ConfigError
from crmbridge.text import for_terminal, json_text

#: the largest id a portal record can have in the cache (SQLite's INTEGER): larger --deal values are refused
MAX_ID = 2**63 - 1

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
        "max_answer_bytes": settings.bitrix24_max_answer_mb * 1024 * 1024,
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
    """JSON for scripts: exact text, nothing a terminal would act on if a person reads it there."""
    sys.stdout.write(json_text(payload) + "\n")


_SLOT = re.compile("\x00(\\d+)\x00")


def markup(template: str, **values: Any) -> Text:
    """Our rich markup around values that stay plain text: `markup("[bold]Deal {id}[/bold] «{title}»", ...)`.

    Values (titles, names, texts from the CRM, paths) are never parsed as markup and never reach the terminal
    with a control character: each takes the style of its place in the template.
    """
    names = list(values)
    marked = Text.from_markup(template.format(**{name: f"\x00{index}\x00" for index, name in enumerate(names)}))
    result = Text()
    position = 0
    for slot in _SLOT.finditer(marked.plain):
        result.append_text(marked[position:slot.start()])
        value = cell(values[names[int(slot.group(1))]])
        for span in marked[slot.start():slot.end()].spans:
            value.stylize(span.style)
        result.append_text(value)
        position = slot.end()
    result.append_text(marked[position:])
    return result


def cell(value: Any, style: str = "") -> Text:
    """A table cell (or line part) holding a value as plain text: no markup, no control characters."""
    return Text(for_terminal("" if value is None else value), style=style)
