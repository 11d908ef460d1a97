"""OAuth 2.0 tokens of a CRM application, kept in the cache and refreshed single-flight across threads and processes.

Shared by every connector that authorises with OAuth (Bitrix24 local apps, amoCRM integrations);
see docs/architecture.md "OAuth token store" for the contract. In short:

    store = TokenStore(cache_path, crm="amocrm")                  # account: the only one stored, or pass it
    store.save("example.amocrm.ru", TokenGrant(access, refresh, expires_at, details))   # after a code exchange
    session = OAuthSession(store, exchange)                       # exchange(refresh_token) -> TokenGrant
    pair = session.pair()                                         # call the CRM with pair.access_token
    pair = session.renew(pair)                                    # after a 401 / expired_token: repeat once

How a refresh stays safe (refresh tokens are single-use on both CRMs):

1. A thread lock, then an exclusive `flock` on `<cache>.oauth-lock`: one refresher per cache at a
   time, across threads and processes. The kernel drops the lock when its holder dies, even by kill -9.
2. Under the lock the pair is read again. If its generation moved on since the caller read it,
   someone else already refreshed: their pair is returned and no call is made.
3. The refresh is recorded (`refresh_started_at`, committed with synchronous=FULL) before the call.
4. The exchange runs; its answer (both tokens) is written in one statement, committed with
   synchronous=FULL, before the new access token is returned to anyone.
5. The old refresh token is never overwritten by anything but a newer pair, so whatever happens
   the cache keeps the newest token crmbridge received. A refresh found still recorded (its process
   died, or its call got no answer) is retried with that token. If the server then refuses it, the
   lost answer had already rotated it (the window no client can close against a single-use
   server: the server committed, the answer never reached the disk); the row is marked `reauthorize`
   and every process says so in one line, without asking the server again.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crmbridge.cache.lock import file_lock
from crmbridge.cache.store import open_cache
from crmbridge.cache.tokens import TokenRow, TokenRows
from crmbridge.errors import CacheError, ConfigError, ReauthorizationRequired, TransientCrmError

__all__ = [
    "CHECKPOINTS",
    "Exchange",
    "OAuthSession",
    "TokenGrant",
    "TokenPair",
    "TokenStore",
]

log = logging.getLogger("crmbridge.oauth")

#: the stored pair of one account (tokens hidden from repr)
TokenPair = TokenRow

#: the names `checkpoint` is called with during a refresh, in order (crash tests kill the process at each)
CHECKPOINTS = ("locked", "recorded", "exchanged", "written")

#: what every OAuth error names as its "method"
TOKEN_METHOD = "oauth/token"


@dataclass(frozen=True, repr=False)
class TokenGrant:
    """What an authorization server answered: a new pair and its non-secret details."""

    access_token: str
    #: None when the server did not send one: the stored refresh token is kept
    refresh_token: str | None
    #: unix seconds the access token expires at, as the server said (advisory only)
    expires_at: float | None = None
    #: non-secret fields worth keeping (Bitrix24: client_endpoint, member_id, domain, scope, ...)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TokenGrant(access_token='***', refresh_token={'***' if self.refresh_token else None})"


#: calls the authorization server with a refresh token; raises ReauthorizationRequired when it
#: refuses the token, another CrmError when it cannot be reached
Exchange = Callable[[str], TokenGrant]

_guard = threading.Lock()
_thread_locks: dict[tuple[str, str], threading.Lock] = {}
_migrated: set[str] = set()


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).isoformat(timespec="seconds")


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TokenStore:
    """The pair of one CRM account in the cache at `path`; every method is safe from any thread or process.

    `account=None` means "the only account of this CRM in the cache" (one cache serves one
    portal or account). `checkpoint(name)` is called at each step of a refresh (CHECKPOINTS);
    tests kill the process there.
    """

    def __init__(
        self,
        path: Path | str,
        crm: str,
        account: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = 180.0,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        if str(path) == ":memory:":
            raise ConfigError(
                "OAuth tokens need a cache file, not :memory:",
                hint="set CRMBRIDGE_CACHE_PATH to a file: every crmbridge process must find the same tokens",
            )
        self.path = Path(path)
        self.crm = crm
        self._account = account
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._checkpoint = checkpoint or (lambda name: None)

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, crm={self.crm!r}, account={self._account!r})"

    # --- storage ------------------------------------------------------------------------------------

    @contextmanager
    def _rows(self) -> Iterator[TokenRows]:
        """A connection of our own: autocommit, synchronous=FULL, so each committed step survives a power cut."""
        key = str(self.path.resolve())
        if key not in _migrated:
            open_cache(self.path).close()  # creates and migrates the file once per process
            _migrated.add(key)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield TokenRows(conn)
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[TokenRows]:
        with self._rows() as rows:
            rows.conn.execute("BEGIN IMMEDIATE")
            try:
                yield rows
            except BaseException:
                rows.conn.execute("ROLLBACK")
                raise
            rows.conn.execute("COMMIT")

    def _private(self) -> None:
        """The cache now holds secrets: only its owner may read it (the WAL holds them too)."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(f"{self.path}{suffix}", 0o600)
            except OSError:
                pass  # not ours to change, or not there: the admin's umask decides

    # --- locks --------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        key = (str(self.path.resolve()), self.crm)
        with _guard:
            thread_lock = _thread_locks.setdefault(key, threading.Lock())
        deadline = time.monotonic() + self._lock_timeout
        if not thread_lock.acquire(timeout=self._lock_timeout):
            raise self._busy()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(f"{self.path}.oauth-lock", wait=max(0.0, deadline - time.monotonic())) as taken:
                if not taken:
                    raise self._busy()
                yield
        finally:
            thread_lock.release()

    def _busy(self) -> TransientCrmError:
        return TransientCrmError(
            f"{TOKEN_METHOD}: another crmbridge process has been refreshing the {self.crm} token "
            f"for over {self._lock_timeout:.0f} s",
            method=TOKEN_METHOD,
            code="REFRESH_LOCK_TIMEOUT",
            description="the token refresh lock is held",
            hint=f"check for a hung crmbridge process using {self.path}",
        )

    # --- reads --------------------------------------------------------------------------------------

    @property
    def account(self) -> str:
        """The account this store serves; with none given, the only one of this CRM in the cache."""
        if self._account is not None:
            return self._account
        with self._rows() as rows:
            accounts = rows.accounts(self.crm)
        if not accounts:
            raise self._not_connected()
        if len(accounts) > 1:
            raise ConfigError(
                f"the cache {self.path} holds {len(accounts)} {self.crm} accounts ({', '.join(accounts)})",
                hint="one cache serves one account: point CRMBRIDGE_CACHE_PATH at a file per account",
            )
        self._account = accounts[0]
        return self._account

    def _not_connected(self) -> ConfigError:
        return ConfigError(
            f"crmbridge is not connected to {self.crm} as an OAuth application (no tokens in {self.path})",
            hint=f"run `crmbridge connect{'' if self.crm == 'bitrix24' else ' --crm ' + self.crm}` first",
        )

    def current(self) -> TokenPair | None:
        """The stored pair, or None when this CRM was never connected."""
        if self._account is None:
            with self._rows() as rows:
                accounts = rows.accounts(self.crm)
            if not accounts:
                return None
        with self._rows() as rows:
            return rows.get(self.crm, self.account)

    def require(self) -> TokenPair:
        """The stored pair; a clear ConfigError when there is none."""
        pair = self.current()
        if pair is None:
            raise self._not_connected()
        if pair.status == "reauthorize":
            log.warning("%s: the stored refresh token was refused (%s); run `crmbridge connect` again", self.crm, pair.error)
        return pair

    # --- writes -------------------------------------------------------------------------------------

    def save(self, account: str, grant: TokenGrant) -> TokenPair:
        """Store the pair of a new authorization (code exchange, long-lived token), replacing any earlier one."""
        if not account:
            raise ValueError("an OAuth pair needs the account it belongs to")
        with self._locked(), self._transaction() as rows:
            rows.replace(
                self.crm,
                account,
                access_token=grant.access_token,
                refresh_token=grant.refresh_token,
                expires_at=grant.expires_at,
                details=dict(grant.details),
                updated_at=_now_iso(self._clock),
            )
        self._private()
        self._account = account
        with self._rows() as rows:
            pair = rows.get(self.crm, account)
        assert pair is not None
        log.info("%s: stored a new token pair for %s (generation %d)", self.crm, account, pair.generation)
        return pair

    def annotate(self, details: Mapping[str, Any]) -> TokenPair:
        """Merge non-secret facts about the connection into the pair's `details` (the tokens stay as they are)."""
        with self._locked(), self._transaction() as rows:
            if not rows.annotate(self.crm, self.account, dict(details), updated_at=_now_iso(self._clock)):
                raise self._not_connected()
        return self.require()

    def forget(self) -> bool:
        """Remove this account's pair (after the app was uninstalled); True if there was one."""
        with self._locked(), self._transaction() as rows:
            return rows.delete(self.crm, self.account)

    def refresh(self, stale_generation: int, exchange: Exchange) -> TokenPair:
        """The pair to use after the CRM refused generation `stale_generation`.

        Single-flight: if another thread or process wrote a newer pair meanwhile, that pair is
        returned and the server is not called. Otherwise `exchange(refresh_token)` is called once
        and its pair is committed before it is returned. Raises ReauthorizationRequired when the
        server refuses the refresh token (now or earlier), the exchange's CrmError when it fails.
        """
        account = self.account
        with self._locked():
            self._checkpoint("locked")
            with self._rows() as rows:
                pair = rows.get(self.crm, account)
            if pair is None:
                raise self._not_connected()
            if pair.generation != stale_generation:
                log.info(
                    "%s: the token was already refreshed (generation %d -> %d); using it without a call",
                    self.crm, stale_generation, pair.generation,
                )
                return pair
            if pair.status == "reauthorize":
                raise self._refused(pair.error or "the refresh token was refused earlier")
            if not pair.refresh_token:
                raise self._refused("the stored token cannot be refreshed (it has no refresh token)")
            interrupted = pair.refresh_started_at
            if interrupted:
                log.warning(
                    "%s: a token refresh started at %s by %s did not finish; retrying it with the stored refresh token",
                    self.crm, pair.refresh_started_at, pair.refresh_by,
                )
            with self._transaction() as rows:
                if not rows.begin_refresh(self.crm, account, pair.generation, started_at=_now_iso(self._clock), by=_me()):
                    raise CacheError(f"oauth_tokens: the {self.crm} pair changed under the refresh lock")
            self._checkpoint("recorded")
            try:
                grant = exchange(pair.refresh_token)
            except ReauthorizationRequired as exc:
                reason = exc.description or exc.message
                if interrupted:
                    reason = (
                        f"{reason}; an earlier refresh (started {interrupted}) was cut off after the server had "
                        "rotated the token, so the new pair never reached the cache"
                    )
                with self._transaction() as rows:
                    rows.refused(self.crm, account, pair.generation, error=reason, updated_at=_now_iso(self._clock))
                raise self._refused(reason) from None
            # Any other failure leaves the refresh recorded: the next attempt knows this one's outcome is unknown.
            self._checkpoint("exchanged")
            with self._transaction() as rows:
                written = rows.rotate(
                    self.crm,
                    account,
                    pair.generation,
                    access_token=grant.access_token,
                    refresh_token=grant.refresh_token or pair.refresh_token,
                    expires_at=grant.expires_at,
                    details={**pair.details, **dict(grant.details)},
                    updated_at=_now_iso(self._clock),
                )
                if not written:
                    raise CacheError(f"oauth_tokens: the {self.crm} pair changed under the refresh lock")
            self._checkpoint("written")
            self._private()
            with self._rows() as rows:
                fresh = rows.get(self.crm, account)
            assert fresh is not None
            log.info("%s: token refreshed (generation %d -> %d)", self.crm, pair.generation, fresh.generation)
            return fresh

    def _refused(self, reason: str) -> ReauthorizationRequired:
        command = "crmbridge connect" + ("" if self.crm == "bitrix24" else f" --crm {self.crm}")
        return ReauthorizationRequired(
            f"{self.crm}: the authorization server refused the stored refresh token: {reason}",
            method=TOKEN_METHOD,
            code="invalid_grant",
            description=reason,
            hint=f"an admin must authorize crmbridge again: run `{command}`",
        )


class OAuthSession:
    """The current pair of one account held in memory, and the rule "a 401 means refresh and repeat once".

    Thread-safe. `renew(failed)` is what a client calls after the CRM refused `failed`, whatever the
    local clock thinks of its expiry; it returns the pair to repeat the call with.
    """

    def __init__(self, store: TokenStore, exchange: Exchange) -> None:
        self.store = store
        self._exchange = exchange
        self._pair: TokenPair | None = None
        self._lock = threading.Lock()

    def pair(self) -> TokenPair:
        with self._lock:
            if self._pair is None:
                self._pair = self.store.require()
            return self._pair

    def renew(self, failed: TokenPair) -> TokenPair:
        pair = self.store.refresh(failed.generation, self._exchange)
        with self._lock:
            if self._pair is None or pair.generation >= self._pair.generation:
                self._pair = pair
            return self._pair

    def __repr__(self) -> str:
        return f"OAuthSession({self.store!r})"
