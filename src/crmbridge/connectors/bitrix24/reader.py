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
class FirstPages:
    """The first page of every incremental list, read in one `batch` request (an idle poll costs just this)."""

    scopes: list[str] | None  # the webhook's scopes, when asked for
    portal_time: str | None  # the portal's clock when the batch ran (the next incremental cursor)
    pages: dict[str, list[RawRecord]]  # list name -> its first page (a full page: more follow from its last id)


#: what an incremental poll reads first, per list: (method, result key, id field)
INCREMENTAL_LISTS: dict[str, tuple[str, str | None]] = {
    "deals": ("crm.deal.list", None),
    "stage_history": ("crm.stagehistory.list", "items"),
    "tasks": ("tasks.task.list", "tasks"),
    "activities": ("crm.activity.list", None),
    "communications": ("crm.activity.list", None),
    "contacts": ("crm.contact.list", None),
    "companies": ("crm.company.list", None),
}


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
        #: what `user.admin` answered for the user the reads run as (None: not asked, or it did not answer)
        self.admin: bool | None = None

    def check_scopes(self, required: Iterable[str] = READ_SCOPES) -> tuple[list[str], str | None]:
        """Fail early, naming the scope the webhook lacks, instead of halfway through a sync.

        Returns the granted scopes and the portal's own clock (`time.date_start`), which becomes
        the next incremental cursor: the portal's clock, not ours, is what DATE_MODIFY is compared with.
        The same request asks `user.admin` (`self.admin`): reads run with the webhook user's rights.
        """
        answer = self.client.batch({"scope": ("scope", None), "admin": ("user.admin", None)})
        if "scope" not in answer.results:
            raise answer.errors["scope"]
        granted = list(answer.results["scope"] or [])
        self._require(granted, required)
        self._note_admin(answer.results.get("admin"))
        portal_time = (answer.time or {}).get("date_start")
        return granted, str(portal_time) if portal_time else None

    def _note_admin(self, value: Any) -> None:
        # user.admin answers a boolean (D api-reference/common/users/user-admin.md); anything else is "unknown"
        self.admin = value if isinstance(value, bool) else None

    def webhook_admin(self) -> bool | None:
        """Ask `user.admin` now: is the user the reads run as a Bitrix24 administrator?"""
        self._note_admin(self.client.call("user.admin").result)
        return self.admin

    @staticmethod
    def _require(granted: list[str], required: Iterable[str]) -> None:
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

    def iter_changed_clients(self, entity: str, *, modified_since: str, after_id: int = 0) -> Iterator[RawRecord]:
        """Contacts or companies edited on their own (a phone added) since a portal time."""
        method, select = {"contacts": ("crm.contact.list", CONTACT_SELECT), "companies": ("crm.company.list", COMPANY_SELECT)}[entity]
        return self.client.iter_list_fast(method, filter={">ID": after_id, ">=DATE_MODIFY": modified_since},
                                          select=select, id_field="ID")

    def list_params(self, name: str, *, after_id: int = 0, since: str | None = None) -> dict[str, Any]:
        """One fast-pattern page of an incremental list (ID ascending, `>ID` cursor, no COUNT)."""
        if name == "deals":
            filter_: dict[str, Any] = {">=DATE_MODIFY": since} if since else {}
            params: dict[str, Any] = {"select": ["*", "UF_*"]}
        elif name == "stage_history":
            filter_, params = {}, {"entityTypeId": 2, "select": ["ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME",
                                                                 "CATEGORY_ID", "STAGE_SEMANTIC_ID", "STAGE_ID"]}
        elif name == "tasks":
            filter_, params = ({">=CHANGED_DATE": since} if since else {}), {"select": TASK_SELECT}
        elif name == "activities":
            filter_ = {**TODO_FILTER, **({">=LAST_UPDATED": since} if since else {})}
            params = {"select": ACTIVITY_SELECT}
        elif name == "communications":
            filter_ = {**COMMUNICATION_FILTER, **({">=LAST_UPDATED": since} if since else {})}
            params = {"select": COMMUNICATION_SELECT}
        else:
            filter_ = {">=DATE_MODIFY": since} if since else {}
            params = {"select": CONTACT_SELECT if name == "contacts" else COMPANY_SELECT}
        return {**params, "filter": {">ID": after_id, **filter_}, "order": {"ID": "ASC"}, "start": -1}

    def first_pages(self, lists: dict[str, dict[str, Any]], *, with_scope: bool = True) -> FirstPages:
        """The first pages of the given lists (name -> `list_params(...)`), and the scopes, in one request."""
        commands: dict[str, tuple[str, dict[str, Any] | None]] = {}
        if with_scope:
            commands["scope"] = ("scope", None)
            commands["admin"] = ("user.admin", None)
        for name, params in lists.items():
            commands[name] = (INCREMENTAL_LISTS[name][0], params)
        answer = self.client.batch(commands)
        for key, error in answer.errors.items():
            if not error.retryable and key != "admin":  # an unanswered user.admin leaves the rights unknown
                raise error
        scopes = None
        if with_scope:
            if "scope" in answer.results:
                scopes = list(answer.results.get("scope") or [])
                self._require(scopes, READ_SCOPES)
                self._note_admin(answer.results.get("admin"))
            else:
                scopes, _ = self.check_scopes()
        # a list whose page a limit refused is left out: the sync reads it the usual way, with its retries
        pages = {name: self.client.rows_of(INCREMENTAL_LISTS[name][0], answer.results.get(name),
                                           INCREMENTAL_LISTS[name][1]) for name in lists if name in answer.results}
        # the portal's clock, not ours, is what DATE_MODIFY is compared with (see check_scopes)
        portal_time = (answer.time or {}).get("date_start")
        return FirstPages(scopes, str(portal_time) if portal_time else None, pages)

    def clients(self, contact_ids: Iterable[int], company_ids: Iterable[int]) -> tuple[list[RawRecord], list[RawRecord]]:
        """Contacts and companies by id in one batch (plus one more for companies only the contacts name)."""
        contact_ids, company_ids = sorted(set(contact_ids)), sorted(set(company_ids))
        calls = [("crm.contact.list", {"filter": {"@ID": contact_ids[i:i + IDS_PER_COMMAND]}, "select": CONTACT_SELECT,
                                       "start": -1}) for i in range(0, len(contact_ids), IDS_PER_COMMAND)]
        calls += [("crm.company.list", {"filter": {"@ID": company_ids[i:i + IDS_PER_COMMAND]}, "select": COMPANY_SELECT,
                                        "start": -1}) for i in range(0, len(company_ids), IDS_PER_COMMAND)]
        contacts: list[RawRecord] = []
        companies: list[RawRecord] = []
        for (method, _), answer in zip(calls, self.client.batch_calls(calls), strict=True):
            if isinstance(answer, CrmError):
                raise answer
            (contacts if method == "crm.contact.list" else companies).extend(answer or [])
        return contacts, companies

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
