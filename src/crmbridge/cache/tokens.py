"""The SQL of the `oauth_tokens` table: read a CRM account's token pair, record a refresh, write a new pair.

Every write is conditional on the generation the caller read, so a writer that lost a race
changes nothing (and finds out from the return value). Transactions are the caller's: the
token store (connectors/oauth.py) commits each step on its own durable connection.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenRow", "TokenRows"]


@dataclass(frozen=True, repr=False)
class TokenRow:
    """One row of oauth_tokens as stored; `repr` never shows the tokens."""

    crm: str
    account: str
    access_token: str
    refresh_token: str | None
    expires_at: float | None
    generation: int
    updated_at: str
    details: dict[str, Any]
    refresh_started_at: str | None
    refresh_by: str | None
    status: str
    error: str | None

    def __repr__(self) -> str:
        return (
            f"TokenRow(crm={self.crm!r}, account={self.account!r}, generation={self.generation}, "
            f"status={self.status!r}, access_token='***', refresh_token={'***' if self.refresh_token else None})"
        )


_COLUMNS = (
    "crm, account, access_token, refresh_token, expires_at, generation, updated_at, details, "
    "refresh_started_at, refresh_by, status, error"
)


def _row(values: tuple[Any, ...]) -> TokenRow:
    (crm, account, access, refresh, expires_at, generation, updated_at, details, started, by, status, error) = values
    try:
        parsed = json.loads(details or "{}")
    except ValueError:
        parsed = {}
    return TokenRow(
        crm=crm,
        account=account,
        access_token=access,
        refresh_token=refresh,
        expires_at=expires_at,
        generation=int(generation),
        updated_at=updated_at,
        details=parsed if isinstance(parsed, dict) else {},
        refresh_started_at=started,
        refresh_by=by,
        status=status,
        error=error,
    )


class TokenRows:
    """oauth_tokens on one sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, crm: str, account: str) -> TokenRow | None:
        found = self.conn.execute(
            f"SELECT {_COLUMNS} FROM oauth_tokens WHERE crm = ? AND account = ?", (crm, account)
        ).fetchone()
        return _row(found) if found else None

    def accounts(self, crm: str) -> list[str]:
        """Accounts of one CRM with a stored pair, oldest first."""
        return [a for (a,) in self.conn.execute("SELECT account FROM oauth_tokens WHERE crm = ? ORDER BY rowid", (crm,))]

    def replace(
        self,
        crm: str,
        account: str,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_at: float | None,
        details: dict[str, Any],
        updated_at: str,
    ) -> int:
        """A pair from a new authorization (connect): replaces whatever was there; returns the new generation."""
        current = self.conn.execute(
            "SELECT generation FROM oauth_tokens WHERE crm = ? AND account = ?", (crm, account)
        ).fetchone()
        generation = (int(current[0]) if current else 0) + 1
        self.conn.execute(
            "INSERT OR REPLACE INTO oauth_tokens (crm, account, access_token, refresh_token, expires_at, generation, "
            "updated_at, details, refresh_started_at, refresh_by, status, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 'active', NULL)",
            (crm, account, access_token, refresh_token, expires_at, generation, updated_at,
             json.dumps(details, ensure_ascii=False, sort_keys=True)),
        )
        return generation

    def begin_refresh(self, crm: str, account: str, generation: int, *, started_at: str, by: str) -> bool:
        """Record that a refresh of `generation` is about to call the server; False if the pair moved on."""
        cursor = self.conn.execute(
            "UPDATE oauth_tokens SET refresh_started_at = ?, refresh_by = ? "
            "WHERE crm = ? AND account = ? AND generation = ?",
            (started_at, by, crm, account, generation),
        )
        return cursor.rowcount == 1

    def rotate(
        self,
        crm: str,
        account: str,
        generation: int,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_at: float | None,
        details: dict[str, Any],
        updated_at: str,
    ) -> bool:
        """Write the refreshed pair over `generation` (both tokens in one statement); False if it moved on."""
        cursor = self.conn.execute(
            "UPDATE oauth_tokens SET access_token = ?, refresh_token = ?, expires_at = ?, details = ?, "
            "generation = generation + 1, updated_at = ?, refresh_started_at = NULL, refresh_by = NULL, "
            "status = 'active', error = NULL WHERE crm = ? AND account = ? AND generation = ?",
            (access_token, refresh_token, expires_at, json.dumps(details, ensure_ascii=False, sort_keys=True),
             updated_at, crm, account, generation),
        )
        return cursor.rowcount == 1

    def refused(self, crm: str, account: str, generation: int, *, error: str, updated_at: str) -> bool:
        """The server refused the refresh token of `generation`: keep the row, mark it for re-authorization."""
        cursor = self.conn.execute(
            "UPDATE oauth_tokens SET status = 'reauthorize', error = ?, updated_at = ?, "
            "refresh_started_at = NULL, refresh_by = NULL WHERE crm = ? AND account = ? AND generation = ?",
            (error, updated_at, crm, account, generation),
        )
        return cursor.rowcount == 1

    def annotate(self, crm: str, account: str, details: dict[str, Any], *, updated_at: str) -> bool:
        """Merge non-secret facts into `details` (e.g. how offline events were bound); the pair is untouched."""
        row = self.get(crm, account)
        if row is None:
            return False
        merged = {**row.details, **details}
        self.conn.execute(
            "UPDATE oauth_tokens SET details = ?, updated_at = ? WHERE crm = ? AND account = ?",
            (json.dumps(merged, ensure_ascii=False, sort_keys=True), updated_at, crm, account),
        )
        return True

    def delete(self, crm: str, account: str) -> bool:
        return self.conn.execute("DELETE FROM oauth_tokens WHERE crm = ? AND account = ?", (crm, account)).rowcount == 1
