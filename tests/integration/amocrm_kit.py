"""Shared helpers of the amoCRM integration tests: a sandbox account on 127.0.0.1, a client and a syncer for it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crmbridge.cache.store import Cache
from crmbridge.connectors.amocrm.client import AmoCRMClient
from crmbridge.connectors.amocrm.limiter import shared_window
from crmbridge.connectors.amocrm.reader import AmoCRMReader
from crmbridge.connectors.amocrm.transport import LongLivedTokenAuth
from crmbridge.sandbox.amocrm import SandboxAccount
from crmbridge.sandbox.amocrm import catalog as amo
from crmbridge.sync_amocrm import AmoCRMSyncer


@pytest.fixture
def make_account() -> Iterator[Callable[..., SandboxAccount]]:
    accounts: list[SandboxAccount] = []

    def start(**options: Any) -> SandboxAccount:
        account = SandboxAccount(**options)
        account.start(port=0)
        accounts.append(account)
        return account

    yield start
    for account in accounts:
        account.stop()


def amo_client(account: SandboxAccount, **options: Any) -> AmoCRMClient:
    """A client sharing the account's window with every other client of it in this process, as production does;
    the window allows what the account allows (tests that are not about the limit run the account faster)."""
    options.setdefault("auth", LongLivedTokenAuth(amo.LONG_LIVED_TOKEN))
    options.setdefault("limiter", shared_window(f"sandbox:{account.port}", account.window.rate))
    return AmoCRMClient(account.base_url, **options)


def amo_syncer(account: SandboxAccount, cache: Cache, client: AmoCRMClient | None = None, **options: Any) -> AmoCRMSyncer:
    return AmoCRMSyncer(AmoCRMReader(client or amo_client(account)), cache, **options)


def account_leads(account: SandboxAccount) -> dict[int, dict[str, Any]]:
    with account.state.lock:
        return {lead_id: dict(lead) for lead_id, lead in account.state.leads.items()}


def assert_cache_equals_account(cache: Cache, account: SandboxAccount) -> None:
    """Every lead as the API has it (minus links), its history events, its tasks, and its clients."""
    expected = account_leads(account)
    cached = {row["id"]: json.loads(row["raw"]) for row in cache.query("SELECT id, raw FROM deals WHERE deleted = 0")}
    assert cached.keys() == expected.keys()
    different = [lead_id for lead_id, lead in expected.items()
                 if {k: v for k, v in cached[lead_id].items() if not k.startswith("_")} != lead]
    assert not different, f"{len(different)} leads differ, e.g. {different[:5]}"
    with account.state.lock:
        events = {e["id"] for e in account.state.events if e["type"] == "lead_status_changed"}
        tasks = {t["id"] for t in account.state.tasks.values() if t["entity_type"] == "leads"}
        wanted_contacts = {pid for ids in account.state.lead_contacts.values() for pid in ids}
    assert {row["crm_id"] for row in cache.query("SELECT crm_id FROM stage_history")} == events
    assert {row["id"] for row in cache.query("SELECT id FROM tasks")} == tasks
    assert wanted_contacts <= {row["id"] for row in cache.query("SELECT id FROM contacts")}
