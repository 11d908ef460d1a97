"""The one exception tree of crmbridge; every CRM error keeps method, HTTP status and the CRM's code and text.

    CrmBridgeError                   anything crmbridge raises on purpose; `str()` is one clear line for a user
    ├── ConfigError                  a setting is missing or wrong (names the setting and the fix)
    ├── MappingError                 a mapping / regulation file is wrong (carries every problem with file:line:col)
    ├── JobCancelled                 a scheduled job was asked to stop (its timeout, a shutdown): it stopped between batches
    ├── CacheError                   the SQLite cache cannot be used (e.g. written by a newer crmbridge)
    │   ├── CacheLocked              another live run holds the cache's writer lock (names it)
    │   └── LockLost                 this run's writer lock was broken (--break-lock): it stops writing
    └── CrmError                     the CRM answered with an error, or could not be reached
        ├── TransientCrmError        worth retrying: 5xx, HTML where JSON was expected, resets, timeouts
        │   └── CrmUnreachable       no HTTP answer at all (DNS, refused, reset, timeout)
        ├── RateLimited              503 QUERY_LIMIT_EXCEEDED: the leaky bucket overflowed; back off and retry
        ├── OperatingTimeExceeded    429 OPERATION_TIME_LIMIT: a method's 10-minute budget is spent; wait until reset_at
        ├── AuthError                401 NO_AUTH_FOUND / expired_token / invalid_token: the credentials are wrong
        │   ├── AuthExpired          expired_token: an OAuth seam may refresh and repeat
        │   └── ReauthorizationRequired  the OAuth server refused the refresh token: a person must connect again
        ├── ScopeError               403 insufficient_scope: the webhook lacks a scope (names it when it can)
        ├── CrmRejected              any other 4xx or CRM error: the request itself is wrong; never retried
        └── BatchCommandError        one command inside a `batch` failed (keeps the command key)
"""

from __future__ import annotations

from typing import Any


class CrmBridgeError(Exception):
    """Base of every error crmbridge raises on purpose."""

    #: what a person should do about it; printed after the message by the CLI
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(CrmBridgeError):
    """A setting is missing or wrong; the message names the setting."""


class RightsError(ConfigError):
    """The CRM user crmbridge works as cannot see everything the regulation judges (e.g. not a Bitrix24 admin)."""


class MappingError(CrmBridgeError):
    """One or more problems in the admin's mapping / regulation files.

    `problems` holds every problem found (all of a file at once), each already
    formatted as `file:line:col: what is wrong — how to fix it`.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid mapping"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class JobCancelled(CrmBridgeError):
    """A scheduled job was asked to stop (its timeout passed, or the daemon stops) and did, between two batches."""


class CacheError(CrmBridgeError):
    """The local SQLite cache cannot be used as it is."""


class CacheLocked(CacheError):
    """Another live process holds the cache's writer lock; `holder` says who (run, pid, host, since)."""

    def __init__(self, message: str, holder: Any = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


class LockLost(CacheError):
    """The writer lock this run held was broken (`--break-lock`) by another run: this one must stop writing."""


class CrmError(CrmBridgeError):
    """The CRM answered with an error or could not be reached.

    Keeps what is needed to debug against the CRM's own docs: the method called,
    the HTTP status, the CRM's error code and description. Never the credentials.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        status: int | None = None,
        code: str | None = None,
        description: str | None = None,
        hint: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.method = method
        self.status = status
        self.code = code
        self.description = description
        self.body = body

    @property
    def retryable(self) -> bool:
        return False


class TransientCrmError(CrmError):
    """A failure worth retrying (5xx, HTML body, connection reset, timeout)."""

    @property
    def retryable(self) -> bool:
        return True


class CrmUnreachable(TransientCrmError):
    """No HTTP answer at all: DNS failure, refused or reset connection, timeout."""


class RateLimited(CrmError):
    """503 QUERY_LIMIT_EXCEEDED: the portal's leaky bucket overflowed."""

    @property
    def retryable(self) -> bool:
        return True


class OperatingTimeExceeded(CrmError):
    """429 OPERATION_TIME_LIMIT: this method's operating budget is spent until `reset_at` (unix seconds)."""

    def __init__(self, message: str, *, reset_at: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reset_at = reset_at

    @property
    def retryable(self) -> bool:
        return True


class AuthError(CrmError):
    """The CRM did not accept the credentials."""


class AuthExpired(AuthError):
    """An OAuth access token expired; an OAuth auth seam refreshes it and repeats the call."""


class ReauthorizationRequired(AuthError):
    """The authorization server refused the stored refresh token (invalid_grant, revoked, app removed).

    No retry can fix it: an admin runs `crmbridge connect` again. Every process sharing the cache
    sees the same state without asking the server again.
    """


class ScopeError(CrmError):
    """The webhook or app lacks a scope the method needs."""


class CrmRejected(CrmError):
    """The CRM refused the request itself (bad parameters, not found, access denied). Never retried."""


class BatchCommandError(CrmError):
    """One command inside a `batch` call failed; `command` is its key in the batch."""

    def __init__(self, message: str, *, command: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.command = command
