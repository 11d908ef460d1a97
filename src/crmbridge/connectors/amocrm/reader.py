"""What crmbridge reads from an amoCRM account, endpoint by endpoint, as pages of raw v4 records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crmbridge.cache.amocrm_rows import HISTORY_EVENT, LIFE_EVENTS
from crmbridge.connectors.amocrm.client import EVENTS_LIMIT, FIELDS_LIMIT, PAGE_LIMIT, AmoCRMClient, Page
from crmbridge.errors import CrmRejected

RawRecord = dict[str, Any]

#: what GET /api/v4/account is asked for (AccountModel: users_groups, datetime_settings, is_api_filter_enabled)
ACCOUNT_WITH = "users_groups,datetime_settings,is_api_filter_enabled,task_types"
#: ids per `filter[id][]` request: keeps the URL well under the front's limits
IDS_PER_REQUEST = 50
#: entity -> (list path, _embedded key)
CLIENTS = {"contacts": ("/api/v4/contacts", "contacts"), "companies": ("/api/v4/companies", "companies")}


@dataclass
class AmoReference:
    """The small, slowly changing lists: the account, pipelines with statuses, lead fields, users and groups."""

    account: RawRecord
    pipelines: list[RawRecord] = field(default_factory=list)
    lead_fields: list[RawRecord] = field(default_factory=list)
    users: list[RawRecord] = field(default_factory=list)

    @property
    def groups(self) -> list[RawRecord]:
        embedded = self.account.get("_embedded") or {}
        return list(embedded.get("users_groups") or [])

    @property
    def timezone(self) -> str | None:
        settings = (self.account.get("_embedded") or {}).get("datetime_settings") or {}
        return settings.get("timezone") or None

    @property
    def filter_enabled(self) -> bool:
        # the docs call API filtering "alpha, for a limited list of accounts"; when off, filters are silently
        # ignored (reference §2), so incremental reads must not be trusted
        return bool(self.account.get("is_api_filter_enabled", True))


class AmoCRMReader:
    """Reads an account through an AmoCRMClient; returns raw records, never interprets them."""

    crm = "amocrm"

    def __init__(self, client: AmoCRMClient) -> None:
        self.client = client

    # --- metadata ---------------------------------------------------------------------------------

    def account(self) -> RawRecord:
        answer = self.client.get("/api/v4/account", {"with": ACCOUNT_WITH})
        if not answer or "id" not in answer:
            raise CrmRejected("GET /api/v4/account: the answer is not an account", method="GET /api/v4/account",
                              status=200, code="UNEXPECTED_SHAPE", description="no account id")
        return answer

    def reference_data(self, account: RawRecord | None = None) -> AmoReference:
        account = account if account is not None else self.account()
        pipelines = list(self.client.items("/api/v4/leads/pipelines", "pipelines", limit=PAGE_LIMIT))
        fields = list(self.client.items("/api/v4/leads/custom_fields", "custom_fields", limit=FIELDS_LIMIT))
        users = list(self.client.items("/api/v4/users", "users", limit=PAGE_LIMIT))
        return AmoReference(account, pipelines, fields, users)

    # --- lists, page by page ------------------------------------------------------------------------

    def lead_pages(self, *, start: int = 1, updated_from: int | None = None) -> Iterator[Page]:
        """Leads by id ascending with their contacts' ids (`with=contacts`), optionally updated since a time."""
        params: dict[str, Any] = {"with": "contacts", "order": {"id": "asc"}}
        if updated_from is not None:
            params["filter"] = {"updated_at": {"from": updated_from}}
        return self.client.pages("/api/v4/leads", "leads", params, start=start)

    def client_pages(self, entity: str, *, start: int = 1, updated_from: int | None = None) -> Iterator[Page]:
        path, key = CLIENTS[entity]
        params: dict[str, Any] = {"order": {"id": "asc"}}
        if updated_from is not None:
            params["filter"] = {"updated_at": {"from": updated_from}}
        return self.client.pages(path, key, params, start=start)

    def task_pages(self, *, start: int = 1, updated_from: int | None = None) -> Iterator[Page]:
        """Tasks of leads (the regulation judges deals), by id ascending."""
        task_filter: dict[str, Any] = {"entity_type": "leads"}
        if updated_from is not None:
            task_filter["updated_at"] = {"from": updated_from}
        return self.client.pages("/api/v4/tasks", "tasks", {"filter": task_filter, "order": {"id": "asc"}},
                                 start=start)

    def event_pages(self, *, start: int = 1, created_from: int | None = None,
                    created_to: int | None = None) -> Iterator[Page]:
        """Lead status changes (the stage history R1 needs), deletions and restores, at 100 per page."""
        created: dict[str, int] = {}
        if created_from is not None:
            created["from"] = created_from
        if created_to is not None:
            created["to"] = created_to
        event_filter: dict[str, Any] = {"type": ",".join((HISTORY_EVENT, *LIFE_EVENTS)), "entity": "lead"}
        if created:
            event_filter["created_at"] = created
        return self.client.pages("/api/v4/events", "events", {"filter": event_filter}, start=start,
                                 limit=EVENTS_LIMIT)

    # --- records by id -------------------------------------------------------------------------------

    def leads_by_ids(self, ids: Iterable[int]) -> list[RawRecord] | None:
        return self._by_ids("/api/v4/leads", "leads", ids, {"with": "contacts"})

    def clients_by_ids(self, entity: str, ids: Iterable[int]) -> list[RawRecord] | None:
        path, key = CLIENTS[entity]
        return self._by_ids(path, key, ids)

    def tasks_by_ids(self, ids: Iterable[int]) -> list[RawRecord] | None:
        return self._by_ids("/api/v4/tasks", "tasks", ids)

    def _by_ids(self, path: str, key: str, ids: Iterable[int], extra: dict[str, Any] | None = None
                ) -> list[RawRecord] | None:
        """Records by id, 50 per request; None when the account ignored the filter (it answered others)."""
        wanted = sorted(set(ids))
        found: list[RawRecord] = []
        for start in range(0, len(wanted), IDS_PER_REQUEST):
            chunk = wanted[start:start + IDS_PER_REQUEST]
            params = {**(extra or {}), "filter": {"id": chunk}}
            rows = list(self.client.items(path, key, params))
            if any(row.get("id") not in chunk for row in rows):
                return None  # filtering is off for this account: the answer says nothing about these ids
            found += rows
        return found
