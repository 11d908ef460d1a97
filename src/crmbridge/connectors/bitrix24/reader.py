"""What crmbridge reads from a Bitrix24 portal, method by method, as lazy iterators of raw records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.errors import CrmError, ScopeError

RawRecord = dict[str, Any]

#: scopes the read path needs; `im` is only needed by enforcement (notifications)
READ_SCOPES = ("crm", "task", "user")
#: every scope the README tells an admin to grant the inbound webhook
ALL_SCOPES = ("crm", "task", "im", "user")

#: fields of a task kept in the cache; UF_CRM_TASK is returned only when selected
TASK_SELECT = [
    "ID", "TITLE", "STATUS", "RESPONSIBLE_ID", "CREATED_BY", "DEADLINE",
    "CREATED_DATE", "CHANGED_DATE", "CLOSED_DATE", "UF_CRM_TASK",
]
#: fields of a CRM to-do kept in the cache (crm.activity.list answers UPPER_CASE strings)
ACTIVITY_SELECT = [
    "ID", "OWNER_TYPE_ID", "OWNER_ID", "TYPE_ID", "PROVIDER_ID", "PROVIDER_TYPE_ID", "SUBJECT", "COMPLETED",
    "STATUS", "RESPONSIBLE_ID", "DEADLINE", "CREATED", "LAST_UPDATED",
]
#: crm.activity.list filter of the activities the regulation reads: to-dos (universal activities) of deals
TODO_FILTER = {"OWNER_TYPE_ID": 2, "PROVIDER_ID": "CRM_TODO"}
#: crm.activity.list filter of what the activity KPIs count: meetings, calls and e-mails (TYPE_ID 1, 2, 4), any owner
COMMUNICATION_FILTER = {"@TYPE_ID": [1, 2, 4]}
COMMUNICATION_SELECT = [
    "ID", "OWNER_TYPE_ID", "OWNER_ID", "TYPE_ID", "PROVIDER_ID", "PROVIDER_TYPE_ID", "SUBJECT", "COMPLETED", "STATUS",
    "DIRECTION", "RESPONSIBLE_ID", "START_TIME", "END_TIME", "DEADLINE", "CREATED", "LAST_UPDATED",
]
CONTACT_SELECT = ["ID", "NAME", "LAST_NAME", "SECOND_NAME", "COMPANY_ID", "PHONE", "EMAIL", "DATE_MODIFY"]
COMPANY_SELECT = ["ID", "TITLE", "PHONE", "EMAIL", "DATE_MODIFY"]
#: ids per `@ID` filter: one command reads up to a page (50) of contacts
IDS_PER_COMMAND = 50


@dataclass
class ReferenceData:
    """The small, slowly changing lists: read whole on every sync."""

    pipelines: list[RawRecord] = field(default_factory=list)
    stages: dict[int, list[RawRecord]] = field(default_factory=dict)  # CATEGORY_ID -> crm.status.list rows
    deal_fields: list[RawRecord] = field(default_factory=list)
    users: list[RawRecord] = field(default_factory=list)
    currencies: list[RawRecord] = field(default_factory=list)  # crm.currency.list (rates to the base currency)
    departments: list[RawRecord] | None = None  # department.get; None when the webhook lacks the department scope


def stage_entity_id(category_id: int) -> str:
    """crm.status.list ENTITY_ID of a deal pipeline's stages: DEAL_STAGE for 0, DEAL_STAGE_<n> otherwise."""
    return "DEAL_STAGE" if category_id == 0 else f"DEAL_STAGE_{category_id}"


class Bitrix24Reader:
    """Reads a portal through a Bitrix24Client; returns raw records, never interprets them."""

    def __init__(self, client: Bitrix24Client) -> None:
        self.client = client

    def check_scopes(self, required: Iterable[str] = READ_SCOPES) -> tuple[list[str], str | None]:
        """Fail early, naming the scope the webhook lacks, instead of halfway through a sync.

        Returns the granted scopes and the portal's own clock (`time.date_start`), which becomes
        the next incremental cursor: the portal's clock, not ours, is what DATE_MODIFY is compared with.
        """
        answer = self.client.call("scope")
        granted = answer.result or []
        missing = [scope for scope in required if scope not in granted]
        if missing:
            raise ScopeError(
                f"the inbound webhook lacks the scope{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                method="scope",
                status=200,
                code="insufficient_scope",
                hint="in Bitrix24 open Developer resources > Inbound webhook, tick "
                + ", ".join(missing)
                + ", save, and keep the same CRMBRIDGE_BITRIX24_WEBHOOK_URL",
            )
        portal_time = (answer.time or {}).get("date_start")
        return list(granted), str(portal_time) if portal_time else None

    def reference_data(self, *, departments: bool = False) -> ReferenceData:
        """Pipelines, stages, fields, users, currencies; departments too when asked (scope `department`)."""
        pipelines = list(self.client.iter_list("crm.category.list", {"entityTypeId": 2}, result_key="categories"))
        category_ids = sorted({int(p.get("id", p.get("ID", 0))) for p in pipelines} | {0})
        calls = [
            ("crm.status.list", {"filter": {"ENTITY_ID": stage_entity_id(cid)}, "order": {"SORT": "ASC"}})
            for cid in category_ids
        ]
        calls.append(("crm.deal.userfield.list", {"filter": {"LANG": "ru"}}))
        # one page (the docs: "total" is always 0; a portal has a handful of currencies)
        calls.append(("crm.currency.list", {"order": {"sort": "asc"}}))
        answers = self.client.batch_calls(calls)
        for answer in answers:
            if isinstance(answer, CrmError):
                raise answer
        stages = {cid: list(answers[i] or []) for i, cid in enumerate(category_ids)}
        deal_fields = list(answers[-2] or [])
        currencies = list(answers[-1] or [])
        users = list(self.client.iter_list_fast("user.get", filter={}, select=None, id_field="ID"))
        found_departments = (list(self.client.iter_list_fast("department.get", filter={}, select=None, id_field="ID"))
                             if departments else None)
        return ReferenceData(pipelines=pipelines, stages=stages, deal_fields=deal_fields, users=users,
                             currencies=currencies, departments=found_departments)

    def iter_deals(self, *, after_id: int = 0, modified_since: str | None = None) -> Iterator[RawRecord]:
        """All deals (ID ascending) after `after_id`, optionally only those modified since a portal time."""
        deal_filter: dict[str, Any] = {">ID": after_id}
        if modified_since:
            deal_filter[">=DATE_MODIFY"] = modified_since
        return self.client.iter_list_fast("crm.deal.list", filter=deal_filter, select=["*", "UF_*"], id_field="ID")

    def iter_stage_history(self, *, after_id: int = 0) -> Iterator[RawRecord]:
        """Stage history is append-only on the portal, so its ID is a complete incremental cursor."""
        return self.client.iter_list_fast(
            "crm.stagehistory.list",
            filter={">ID": after_id},
            select=["ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME", "CATEGORY_ID", "STAGE_SEMANTIC_ID", "STAGE_ID"],
            id_field="ID",
            result_key="items",
            params={"entityTypeId": 2},
        )

    def iter_tasks(self, *, after_id: int = 0, changed_since: str | None = None) -> Iterator[RawRecord]:
        task_filter: dict[str, Any] = {">ID": after_id}
        if changed_since:
            task_filter[">=CHANGED_DATE"] = changed_since
        return self.client.iter_list_fast(
            "tasks.task.list", filter=task_filter, select=TASK_SELECT, id_field="ID", result_key="tasks"
        )

    def iter_todos(self, *, after_id: int = 0, updated_since: str | None = None) -> Iterator[RawRecord]:
        """The deals' CRM to-dos (ID ascending) after `after_id`, optionally only those updated since a portal time.

        A stage task may be a to-do (R3 `kind: todo`); other activities (calls, e-mails) are not read.
        """
        todo_filter: dict[str, Any] = {">ID": after_id, **TODO_FILTER}
        if updated_since:
            todo_filter[">=LAST_UPDATED"] = updated_since
        return self.client.iter_list_fast("crm.activity.list", filter=todo_filter, select=ACTIVITY_SELECT, id_field="ID")

    def iter_communications(self, *, after_id: int = 0, updated_since: str | None = None) -> Iterator[RawRecord]:
        """Calls, meetings and e-mails (any owner: deal, contact, company, lead) for the activity KPIs."""
        activity_filter: dict[str, Any] = {">ID": after_id, **COMMUNICATION_FILTER}
        if updated_since:
            activity_filter[">=LAST_UPDATED"] = updated_since
        return self.client.iter_list_fast("crm.activity.list", filter=activity_filter, select=COMMUNICATION_SELECT,
                                          id_field="ID")

    def iter_plan_items(self, entity_type_id: int) -> Iterator[RawRecord]:
        """Every item of the smart process that holds plans (crm.item.list: camelCase rows in result.items)."""
        return self.client.iter_list_fast("crm.item.list", filter={}, select=["*"], id_field="id",
                                          result_key="items", params={"entityTypeId": entity_type_id})

    def iter_changed_clients(self, entity: str, *, modified_since: str) -> Iterator[RawRecord]:
        """Contacts or companies edited on their own (a phone added) since a portal time."""
        method, select = {"contacts": ("crm.contact.list", CONTACT_SELECT), "companies": ("crm.company.list", COMPANY_SELECT)}[entity]
        return self.client.iter_list_fast(method, filter={">=DATE_MODIFY": modified_since}, select=select, id_field="ID")

    def contacts(self, ids: Iterable[int]) -> list[RawRecord]:
        return self._by_ids("crm.contact.list", ids, CONTACT_SELECT)

    def companies(self, ids: Iterable[int]) -> list[RawRecord]:
        return self._by_ids("crm.company.list", ids, COMPANY_SELECT)

    def _by_ids(self, method: str, ids: Iterable[int], select: list[str]) -> list[RawRecord]:
        """Records by id, 50 ids per `@ID` command and 50 commands per HTTP request."""
        wanted = sorted(set(ids))
        calls = [
            (method, {"filter": {"@ID": wanted[i : i + IDS_PER_COMMAND]}, "select": select, "start": -1})
            for i in range(0, len(wanted), IDS_PER_COMMAND)
        ]
        records: list[RawRecord] = []
        for answer in self.client.batch_calls(calls):
            if isinstance(answer, CrmError):
                raise answer
            records.extend(answer or [])
        return records
