"""What every CLI command shares: settings, the client, the cache, the console and how errors are shown."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from crmbridge.cache.store import Cache, open_cache
from crmbridge.config import Settings, load_settings
from crmbridge.connectors.bitrix24.client import Bitrix24Client, validate_webhook_url
from crmbridge.connectors.bitrix24.limiter import bucket_file
from crmbridge.connectors.bitrix24.app import authorization_server, effective_connector, oauth_auth
from crmbridge.errors import CacheError
from crmbridge.text import JsonText, for_terminal, json_text

#: the largest id a portal record can have in the cache (SQLite's INTEGER): larger --deal values are refused
MAX_ID = 2**63 - 1

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

#: said by `sync` and `check --live` when user.admin answered false (issue 7, item 13)
RIGHTS_WARNING = ("the webhook's user is not a Bitrix24 administrator (user.admin answered false): it sees only the "
                  "tasks it takes part in, so R3 would find other managers' stage tasks missing, and `crmbridge "
                  "enforce` refuses to run; create the inbound webhook as a portal administrator")


class CliState:
    """Options given before the command (`crmbridge --debug sync`)."""

    debug: bool = False


state = CliState()


def settings() -> Settings:
    return load_settings()


__all__ = ["authorization_server", "client_from", "effective_connector", "oauth_auth"]


def client_from(settings: Settings, webhook_url: str | None = None) -> Bitrix24Client:
    """The Bitrix24 client for the configured portal (or `webhook_url`); see `connectors.registry.client_for`."""
    if webhook_url:
        return Bitrix24Client(validate_webhook_url(webhook_url), rate=settings.bitrix24_rate,
                              burst=settings.bitrix24_burst, operating_limit=settings.bitrix24_operating_limit,
                              max_attempts=settings.bitrix24_max_attempts, bucket=bucket_file(settings.cache_path),
                              max_answer_bytes=settings.bitrix24_max_answer_mb * 1024 * 1024)
    from crmbridge.connectors.registry import client_for

    client = client_for(settings.model_copy(update={"crm": "bitrix24"}))
    assert isinstance(client, Bitrix24Client)
    return client


def crm_client(settings: Settings) -> Any:
    """The client of the configured CRM (CRMBRIDGE_CRM): Bitrix24Client or AmoCRMClient."""
    from crmbridge.connectors.registry import client_for

    return client_for(settings)


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


def print_json_list(payload: dict[str, Any], name: str, items: Iterable[Any]) -> None:
    """`print_json({**payload, name: list(items)})` written as it goes, one item a line: a long list (45,000
    violations) is neither held twice as text nor indented by the pure-Python encoder (seconds at that size)."""
    head = json_text({**payload, name: []})
    opening = head.rindex("[]")  # the list is the last key: everything before its "[]" is printed as is
    write = sys.stdout.write
    write(head[:opening] + "[")
    encode = partial(json_text, indent=None)  # C1 and bidi controls escaped, as in print_json
    written = False
    batch: list[str] = []
    for item in itertools.chain(items, [None]):
        if item is not None:
            batch.append(item if isinstance(item, JsonText) else encode(item))
        if batch and (item is None or len(batch) == 1000):
            write((",\n    " if written else "\n    ") + ",\n    ".join(batch))
            written, batch = True, []
    write(("\n  " if written else "") + head[opening + 1:] + "\n")
