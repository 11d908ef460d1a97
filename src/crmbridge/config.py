"""Settings of crmbridge: read from the environment and `.env`, prefix `CRMBRIDGE_`; secrets stay `SecretStr`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crmbridge.errors import ConfigError

ENV_PREFIX = "CRMBRIDGE_"


class Settings(BaseSettings):
    """Every setting crmbridge reads; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    #: which CRM this cache and these mappings serve: bitrix24 (the default) or amocrm
    crm: Literal["bitrix24", "amocrm"] = "bitrix24"

    #: inbound webhook of the portal, e.g. https://example.bitrix24.ru/rest/1/abc123/ ; the code in it is a secret.
    #: Empty means "the built-in sandbox portal" for `make demo`.
    bitrix24_webhook_url: SecretStr | None = None
    #: leaky bucket of the portal: drain per second and capacity (Enterprise: 5 and 250)
    bitrix24_rate: float = Field(default=2.0, gt=0)
    bitrix24_burst: int = Field(default=50, ge=1)
    #: seconds of method time a portal allows per method per 10 minutes (docs' example: 480)
    bitrix24_operating_limit: float = Field(default=480.0, gt=0)
    #: attempts per request on transient failures (5xx, resets, timeouts) before giving up
    bitrix24_max_attempts: int = Field(default=8, ge=1, le=50)
    #: application token of the portal's outgoing webhook (to authenticate incoming events)
    bitrix24_application_token: SecretStr | None = None
    #: a Bitrix24 local server application (OAuth): needed for offline events, and so that the bridge's own
    #: writes are not queued back to it. `crmbridge connect` authorizes it; its tokens live in the cache.
    #: Also the application's CLIENT_ID that im.notify.system.add's TAG needs through a webhook (the `notify` channel)
    bitrix24_client_id: str | None = None
    bitrix24_client_secret: SecretStr | None = None
    #: the authorization server (the sandbox's own address in tests and the demo)
    bitrix24_oauth_url: str = "https://oauth.bitrix.info/"
    #: the `auth_connector` source key the app binds its offline events with and sends on its own writes
    #: (Professional plan and above); empty: none (every change, the bridge's own included, is queued)
    bitrix24_auth_connector: str = Field(default="crmbridge", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    #: seconds between polls of the offline event queue while it is empty (one request each)
    bitrix24_offline_poll_seconds: float = Field(default=5.0, gt=0)

    #: the amoCRM / Kommo account's address, e.g. https://example.amocrm.ru (plain http for loopback only)
    amocrm_base_url: str | None = None
    #: a private integration's long-lived token; instead of the OAuth integration below
    amocrm_long_lived_token: SecretStr | None = None
    #: the OAuth integration (amoCRM > Settings > Integrations): its id, secret key and redirect URI
    amocrm_client_id: str | None = None
    amocrm_client_secret: SecretStr | None = None
    amocrm_redirect_uri: str | None = None
    #: requests per second to the account: amoCRM allows 7 and blocks an account that keeps exceeding it
    amocrm_rate: int = Field(default=7, ge=1, le=7)
    #: attempts per request on transient failures (5xx, resets, timeouts, 429) before giving up
    amocrm_max_attempts: int = Field(default=8, ge=1, le=50)
    #: minutes between re-reads of the account's metadata and of client cards edited on their own
    amocrm_refresh_minutes: int = Field(default=60, ge=0)
    #: the secret path segment of the webhook URL the daemon serves (/amocrm/hooks/<secret>)
    amocrm_hook_secret: SecretStr | None = None

    cache_path: Path = Path("crmbridge.db")
    mappings_dir: Path = Path("mappings")
    jobs_dir: Path = Path("jobs")

    #: loop guard: reverts of one deal per day before the bridge stops reverting and escalates to the head
    enforce_max_reverts_per_day: int = Field(default=3, ge=0)
    #: enforce even when the webhook's Bitrix24 user is not an administrator (its role must see every deal and task)
    enforce_allow_non_admin: bool = False
    #: how messages reach people: chat (im.message.add to the person's private dialog, read back after a lost
    #: answer: exactly once) or notify (im.notify.system.add: no read-back; see the README)
    enforce_notify_channel: Literal["chat", "notify"] = "chat"

    #: minutes re-read before the incremental cursor, so edits committed late on the portal are not missed
    sync_overlap_minutes: int = Field(default=5, ge=0)
    #: minutes between re-reads of pipelines, stages, fields and users by an incremental sync (a full sync always reads them)
    sync_metadata_minutes: int = Field(default=60, ge=0)
    #: seconds a sync waits for another sync of the same cache to finish before it stops and says who holds it
    sync_lock_wait_seconds: float = Field(default=60.0, ge=0, le=86_400)

    # --- the daemon (`crmbridge serve`) ---
    #: largest event body accepted (bytes); a longer one gets 413
    event_max_bytes: int = Field(default=65_536, ge=1_024)
    #: processing failures of one event before it goes to the dead letters (an unreachable portal does not count)
    inbox_max_attempts: int = Field(default=8, ge=1)
    #: days processed events stay in the inbox table (for inspection), then they are pruned
    inbox_keep_days: int = Field(default=7, ge=0)
    #: /readyz fails when the oldest pending event waits longer than this (seconds)
    ready_max_lag_seconds: int = Field(default=300, ge=1)
    #: seconds a SIGTERM waits for running jobs before the daemon exits anyway (their work is resumable)
    stop_timeout_seconds: int = Field(default=60, ge=0)

    @field_validator("bitrix24_webhook_url", "bitrix24_application_token", "bitrix24_client_id",
                     "bitrix24_client_secret", "amocrm_base_url", "amocrm_long_lived_token", "amocrm_client_id",
                     "amocrm_client_secret", "amocrm_redirect_uri", "amocrm_hook_secret", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def bitrix24_oauth_configured(self) -> bool:
        """The Bitrix24 application's client id and secret are both set."""
        return bool(self.bitrix24_client_id and self.bitrix24_client_secret)


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a wrong value, or a CRMBRIDGE_ name that is no setting (a typo would otherwise be ignored
    and its default used), becomes one ConfigError line naming the variable (and the .env line)."""
    unknown = unknown_settings(Path(".env"), os.environ)
    if unknown:
        raise ConfigError("; ".join(unknown), hint="fix the name; `.env.example` lists every setting")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err.get("loc") else "a CRMBRIDGE_ setting"
        raise ConfigError(f"{name}: {err['msg']}", hint="fix it in the environment or in .env") from None


def unknown_settings(env_file: Path, environ: Mapping[str, str]) -> list[str]:
    """`CRMBRIDGE_*` names in `.env` (with their line) or the environment that are not settings, each with a guess."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    found: list[str] = []
    try:
        lines = env_file.read_text(encoding="utf-8").splitlines() if env_file.is_file() else []
    except (OSError, UnicodeDecodeError):
        lines = []  # pydantic-settings reports an unreadable file itself
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        name = text.split("=", 1)[0].strip().upper() if "=" in text and not text.startswith("#") else ""
        if name.startswith(ENV_PREFIX) and name not in known:
            found.append(f"{env_file}:{number}: {name} is not a crmbridge setting{_guess(name, known)}")
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            found.append(f"environment variable {name} is not a crmbridge setting{_guess(upper, known)}")
    return found


def _guess(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" — did you mean {close[0]}?" if close else ""
