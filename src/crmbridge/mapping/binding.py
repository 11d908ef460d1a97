"""Raw Bitrix24 records (UPPER_CASE string dicts) + the binding -> Deals in the regulation's vocabulary."""

from __future__ import annotations

import re
from dataclasses import replace as dataclass_replace
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Iterator, Mapping
from zoneinfo import ZoneInfo

from crmbridge.bulk import paused_gc
from crmbridge.cache.deals import DealRecords
from crmbridge.mapping import records
from crmbridge.mapping.schema import IGNORE, AnyBinding, FieldSpec, RegulationSpec
from crmbridge.model import (
    LOST,
    WON,
    Client,
    Deal,
    EntryKind,
    FieldValue,
    Outcome,
    TODO,
    StageEntry,
    Task,
    TaskStatus,
)

_ENTRY_KINDS = {"1": EntryKind.CREATED, "2": EntryKind.MOVED, "3": EntryKind.CLOSED, "5": EntryKind.PIPELINE_CHANGED}
_TASK_STATUS = {"1": TaskStatus.PENDING, "2": TaskStatus.PENDING, "3": TaskStatus.IN_PROGRESS,
                "4": TaskStatus.COMPLETED, "5": TaskStatus.COMPLETED, "6": TaskStatus.DEFERRED}
#: the keys of a Bitrix24 deal record `DealMapper.deal` reads besides the bound fields (a test watches it read)
DEAL_KEYS = ("ID", "TITLE", "CATEGORY_ID", "STAGE_ID", "STAGE_SEMANTIC_ID", "ASSIGNED_BY_ID", "DATE_CREATE",
             "DATE_MODIFY", "MOVED_TIME", "LAST_ACTIVITY_TIME", "LAST_ACTIVITY_BY", "CLOSED", "CLOSEDATE",
             "PROBABILITY", "OPPORTUNITY")
_RU_DATE = re.compile(r"^(\d{2})\.(\d{2})\.(\d{4})(?:\s+(\d{2}):(\d{2})(?::(\d{2}))?)?$")
#: how CRMs write yes / no (Bitrix24 boolean fields 1 / 0, sometimes Y / N; amoCRM checkboxes true / false)
_YES_NO = {"1": "1", "Y": "1", "y": "1", "true": "1", "True": "1", "0": "0", "N": "0", "n": "0", "false": "0",
           "False": "0"}
_URL = re.compile(r"^(https?|ftp)://\S+$|^www\.\S+$", re.IGNORECASE)


#: years a CRM date may have: beyond them it is a typo or a broken answer, and date arithmetic near year 1 or
#: 9999 overflows (a deadline of 9999-12-31 plus a day); such a value reads as "not a date"
YEARS = range(1000, 9001)


def parse_moment(raw: Any, zone: Any = timezone.utc) -> datetime | None:
    """A Bitrix24 date-time ("2026-11-20T10:00:00+03:00", "20.11.2026 10:00:00", "2026-11-20") -> aware datetime."""
    if raw is None or raw == "" or raw is False:
        return None
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=zone)
    text = raw if type(raw) is str else str(raw)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = _parse_other(text.strip())
        if moment is None:
            return None
    if moment.year not in YEARS:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=zone)
    # one tzinfo object for every moment keeps comparisons on CPython's fast path; the instant is unchanged
    return moment.astimezone(zone) if zone is not timezone.utc else moment


def _parse_other(text: str) -> datetime | None:
    """Padded ISO text or the portal's localised "20.11.2026 10:00:00"."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    match = _RU_DATE.match(text)
    if match is None:
        return None
    day, month, year, hour, minute, second = match.groups()
    try:
        return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None


def parse_day(raw: Any) -> date | None:
    """A Bitrix24 date ("2026-01-15", "2026-01-15T00:00:00+03:00", "15.01.2026") -> date, keeping the written day."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    text = str(raw).strip()
    try:
        day = date.fromisoformat(text[:10])
    except ValueError:
        moment = parse_moment(text)
        return moment.date() if moment else None
    return day if day.year in YEARS else None


def _decimal(raw: Any) -> Decimal | None:
    """A finite number, or None (empty, not a number, NaN, Infinity)."""
    if raw in (None, "") or isinstance(raw, (bool, dict, list)):
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _whole(raw: Any) -> int | None:
    value = _decimal(raw)
    return int(value) if value is not None and abs(value) < 10**12 else None


def _from_timestamp(raw: float, zone: Any) -> datetime | None:
    try:
        moment = datetime.fromtimestamp(raw, zone)
    except (OverflowError, OSError, ValueError):
        return None
    return moment if moment.year in YEARS else None


def _first(raw: Any) -> Any:
    if isinstance(raw, (list, tuple)):
        return raw[0] if raw else None
    return raw


class DealMapper:
    """Turns cached Bitrix24 records into Deals, using one regulation and its Bitrix24 binding."""

    def __init__(self, regulation: RegulationSpec, binding: AnyBinding) -> None:
        self.regulation = regulation
        self.binding = binding
        zone_name = binding.timezone or (regulation.calendar.timezone if regulation.calendar else None)
        self.zone = ZoneInfo(zone_name) if zone_name else timezone.utc
        self.direction_of: dict[str, str | None] = {}
        self.ignored = frozenset(category for category, pipeline in binding.pipelines.items()
                                 if pipeline.direction == IGNORE)
        # keyed by (pipeline, CRM stage): amoCRM's won 142 and lost 143 are the same ids in every pipeline
        self.stage_of: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        for category, pipeline in binding.pipelines.items():
            direction = None if pipeline.direction == IGNORE else pipeline.direction
            self.direction_of[category] = direction
            for crm_stage, target in pipeline.stages.items():
                self.stage_of[(category, crm_stage)] = (direction, None if target == IGNORE or direction is None else target)
        # raw records of the binding's CRM -> the flat vocabulary read below (Bitrix24's own keys)
        amocrm = binding.crm == "amocrm"
        self.adapt_deal: records.Adapter = records.amocrm_lead(
            self.zone, getattr(binding, "probability_field", None)) if amocrm else records.same
        self.adapt_client: records.Adapter = records.amocrm_client(self.zone) if amocrm else records.same
        # amoCRM's history is its status changes: where a lead was created is where its first change came from
        self.synthesize_creation = amocrm
        # stage task titles by the kind the regulation wants (amoCRM tasks stand in for to-dos by their title)
        self.todo_titles: set[str] = set()
        self.task_titles: set[str] = set()
        for direction in regulation.directions.values():
            for spec in [stage.task for stage in direction.stages] + [direction.won.task, direction.lost.task]:
                if spec is not None:
                    titles = self.todo_titles if spec.kind == TODO else self.task_titles
                    titles.add(" ".join(spec.title.split()).casefold())
        self._cards: dict[tuple[str, Any, Any], Client | None] = {}
        self.readers: list[tuple[str, str, Callable[[Any], FieldValue]]] = []
        self.client_fields: list[tuple[str, str]] = []
        for field_id, spec in regulation.fields.items():
            if spec.type in ("phone", "email"):
                self.client_fields.append((field_id, spec.type))
                continue
            bound = binding.fields.get(field_id)
            if bound is not None:
                self.readers.append((field_id, bound.crm_field, self._reader(spec, dict(bound.options))))
        #: the keys of a raw deal the mapping reads, for a cache to decode only those (None: the whole record;
        #: amoCRM's adapter reads the lead's nested shape)
        self.deal_keys: tuple[str, ...] | None = None if amocrm else tuple(
            dict.fromkeys((*DEAL_KEYS, *(crm_field for _, crm_field, _ in self.readers))))

    # ------------------------------------------------------------ fields

    def _reader(self, spec: FieldSpec, options: Mapping[str, str]) -> Callable[[Any], FieldValue]:
        zone = self.zone
        empty = FieldValue(None)
        by_option = {crm_option: FieldValue(option) for crm_option, option in options.items()}  # immutable: shared

        def text(raw: Any) -> FieldValue:
            raw = _first(raw)
            value = str(raw).strip() if raw not in (None, False) else ""
            return FieldValue(value) if value else empty

        def number(raw: Any) -> FieldValue:
            raw = _first(raw)
            if raw in (None, "", False):
                return empty
            try:
                value = Decimal(raw) if type(raw) is str else None  # "19999.99": the common case
            except InvalidOperation:
                value = None
            if value is None:
                try:  # "1 000,50", "100|RUB" (money fields), numbers from JSON
                    value = Decimal(str(raw).replace(" ", "").replace(",", ".").split("|")[0])
                except InvalidOperation:
                    return FieldValue(None, raw, "not a number")
            return FieldValue(value) if value.is_finite() else FieldValue(None, raw, "not a number")

        def day(raw: Any) -> FieldValue:
            raw = _first(raw)
            if raw in (None, "", False):
                return empty
            if type(raw) is int or type(raw) is float:  # amoCRM date fields: unix seconds
                stamped = _from_timestamp(raw, zone)
                return FieldValue(stamped.date()) if stamped else FieldValue(None, raw, "not a date")
            try:
                value: date | None = date.fromisoformat(raw[:10]) if type(raw) is str and raw[4:5] == "-" else None
            except ValueError:
                value = None
            if value is not None and value.year not in YEARS:
                return FieldValue(None, raw, "not a date")
            if value is None:
                value = parse_day(raw)
            return FieldValue(value) if value else FieldValue(None, raw, "not a date")

        def moment(raw: Any) -> FieldValue:
            raw = _first(raw)
            if raw in (None, "", False):
                return empty
            if type(raw) is int or type(raw) is float:  # amoCRM date_time fields: unix seconds
                stamped = _from_timestamp(raw, zone)
                return FieldValue(stamped) if stamped else FieldValue(None, raw, "not a date")
            value = parse_moment(raw, zone)
            return FieldValue(value) if value else FieldValue(None, raw, "not a date")

        # a yes/no CRM field bound as an enum: its options are keyed "1" and "0" (no enumeration option has id 0)
        yes_no = "0" in by_option

        def enum(raw: Any) -> FieldValue:
            raw = _first(raw)
            if yes_no:
                key = _YES_NO.get(raw if type(raw) is str else str(raw).lower() if isinstance(raw, (bool, int)) else raw)
                if key is not None:
                    return by_option.get(key, empty)
            if raw in (None, "", False, "0"):
                return empty
            shared = by_option.get(raw if type(raw) is str else str(raw))
            return shared if shared is not None else FieldValue(None, raw, f"unknown option {raw}")

        def link(raw: Any) -> FieldValue:
            found = text(raw)
            if found.value is not None and not _URL.match(found.value):
                return FieldValue(None, raw, "not a link")
            return found

        return {"text": text, "number": number, "date": day, "datetime": moment, "enum": enum, "link": link}[spec.type]

    # ------------------------------------------------------------ records

    def stage_entry(self, row: Mapping[str, Any]) -> StageEntry | None:
        entered = parse_moment(row.get("CREATED_TIME"), self.zone)
        crm_stage = str(row.get("STAGE_ID") or "")
        if entered is None or not crm_stage:
            return None
        category = str(row.get("CATEGORY_ID"))
        direction, stage = self.stage_of.get((category, crm_stage), (self.direction_of.get(category), None))
        return StageEntry(crm_stage, entered, _ENTRY_KINDS.get(str(row.get("TYPE_ID")), EntryKind.MOVED),
                          direction, stage, str(row.get("ID") or ""))

    def task(self, row: Mapping[str, Any]) -> Task:
        return Task(
            id=str(row.get("id") or row.get("ID") or ""),
            title=str(row.get("title") or row.get("TITLE") or ""),
            status=_TASK_STATUS.get(str(row.get("status") or row.get("STATUS") or ""), TaskStatus.OTHER),
            responsible=str(row.get("responsibleId") or row.get("RESPONSIBLE_ID") or "") or None,
            created=parse_moment(row.get("createdDate") or row.get("CREATED_DATE"), self.zone),
            deadline=parse_moment(row.get("deadline") or row.get("DEADLINE"), self.zone),
            closed=parse_moment(row.get("closedDate") or row.get("CLOSED_DATE"), self.zone),
            by_bridge=bool(row.get("byBridge")),
        )

    def todo(self, row: Mapping[str, Any]) -> Task:
        """A crm.activity.list to-do (UPPER_CASE strings) -> a Task of kind TODO.

        A to-do is open or completed (COMPLETED N / Y); crm.activity.list has no completion time, so a
        completed one counts as closed at its LAST_UPDATED (completing it is what last changed it).
        """
        completed = str(row.get("COMPLETED") or "").upper() == "Y"
        return Task(
            id=str(row.get("ID") or ""),
            title=str(row.get("SUBJECT") or ""),
            status=TaskStatus.COMPLETED if completed else TaskStatus.PENDING,
            responsible=str(row.get("RESPONSIBLE_ID") or "") or None,
            created=parse_moment(row.get("CREATED"), self.zone),
            deadline=parse_moment(row.get("DEADLINE"), self.zone),
            closed=parse_moment(row.get("LAST_UPDATED"), self.zone) if completed else None,
            kind=TODO,
            by_bridge=bool(row.get("byBridge")),
        )

    def _tasks(self, tasks: Iterable[Mapping[str, Any]], todos: Iterable[Mapping[str, Any]]) -> tuple[Task, ...]:
        mapped = tuple(self.task(row) for row in tasks)
        if self.synthesize_creation and self.todo_titles:
            # amoCRM has one kind of task: where the regulation asks for a to-do, an amoCRM task of that title is one
            out: list[Task] = []
            for task in mapped:
                if task.title_key in self.todo_titles:
                    out.append(dataclass_replace(task, kind=TODO))
                    if task.title_key in self.task_titles:  # a title both kinds use: it counts as either
                        out.append(task)
                else:
                    out.append(task)
            return tuple(out)
        return mapped + tuple(self.todo(row) for row in todos)

    def _creation(self, history: list[Mapping[str, Any]], entries: list[StageEntry], category: str, crm_stage: str,
                  created: datetime) -> StageEntry:
        """amoCRM: the lead was created where its first status change came from (value_before), or where it is now
        when it never moved; at its creation time (events older than the feed keeps cannot be told)."""
        first = entries[0] if entries else None
        row = next((row for row in history if first is not None and str(row.get("ID") or "") == first.crm_id), None)
        if row is not None and row.get("FROM_STAGE_ID"):
            category, crm_stage = str(row.get("FROM_CATEGORY_ID") or category), str(row["FROM_STAGE_ID"])
        direction, stage = self.stage_of.get((category, crm_stage), (self.direction_of.get(category), None))
        entered = min(created, first.entered) if first is not None else created
        return StageEntry(crm_stage, entered, EntryKind.CREATED, direction, stage, "")

    def _card(self, row: Mapping[str, Any] | None, kind: str) -> Client | None:
        """A client card, mapped once per version of the contact / company (many deals share one)."""
        if not row:
            return None
        key = (kind, row.get("ID"), row.get("DATE_MODIFY"))
        card = self._cards.get(key) if key[2] is not None else None
        if card is None:
            card = self.client(row, kind)
            if key[2] is not None:
                self._cards[key] = card
        return card

    def client(self, row: Mapping[str, Any] | None, kind: str) -> Client | None:
        if not row:
            return None
        row = self.adapt_client(row)

        def values(key: str) -> tuple[str, ...]:
            return tuple(str(item.get("VALUE")).strip() for item in row.get(key) or ()
                         if isinstance(item, Mapping) and str(item.get("VALUE") or "").strip())
        name = row.get("TITLE") or " ".join(str(part) for part in (row.get("NAME"), row.get("LAST_NAME")) if part)
        return Client(str(row.get("ID") or ""), kind, str(name or ""), values("PHONE"), values("EMAIL"))

    def deal(self, raw: Mapping[str, Any], history: Iterable[Mapping[str, Any]] = (),
             tasks: Iterable[Mapping[str, Any]] = (), contact: Mapping[str, Any] | Client | None = None,
             company: Mapping[str, Any] | Client | None = None, todos: Iterable[Mapping[str, Any]] = (), *,
             own_users: frozenset[str] = frozenset(), reverted: Mapping[str, str] | None = None) -> Deal:
        """One raw `crm.deal.get` record with its stage history, tasks, contact, company (raw or mapped) and
        CRM to-dos (crm.activity.list records) -> Deal; the to-dos join its tasks as Tasks of kind TODO.

        `own_users`: the users crmbridge writes as. The deal's last timeline activity by one of them is taken for
        crmbridge's own (a task, comment or to-do it set), not a person's: it does not make a stale deal active.
        `reverted`: {stage entry crmbridge reverted: the CRM stage it moved the deal back to} (the audit log); the
        entry that move made is marked `by_bridge`."""
        zone = self.zone
        raw = self.adapt_deal(raw)
        crm_stage = str(raw.get("STAGE_ID") or "")
        category = str(raw.get("CATEGORY_ID") or "0")
        direction, stage = self.stage_of.get((category, crm_stage), (self.direction_of.get(category), None))
        created = parse_moment(raw.get("DATE_CREATE"), zone) or datetime(1970, 1, 1, tzinfo=timezone.utc)
        if self.synthesize_creation:
            history = list(history)
        entries = [entry for entry in map(self.stage_entry, history) if entry is not None]
        # numeric ids (Bitrix24) order entries of one second by id; amoCRM event ids (ULIDs) sort by time as text
        entries.sort(key=lambda entry: (entry.entered, 0, int(entry.crm_id), "") if entry.crm_id.isdigit()
                     else (entry.entered, 1, 0, entry.crm_id))
        if self.synthesize_creation and not any(entry.kind is EntryKind.CREATED for entry in entries):
            entries.insert(0, self._creation(history, entries, category, crm_stage, created))
        if entries and entries[-1].crm_stage != crm_stage:
            # the history lags behind the deal (not synced yet): the deal's own stage is the truth
            moved = parse_moment(raw.get("MOVED_TIME"), zone) or parse_moment(raw.get("DATE_MODIFY"), zone) or created
            entries.append(StageEntry(crm_stage, max(moved, entries[-1].entered), EntryKind.MOVED, direction, stage))
        if reverted:
            entries = [dataclass_replace(entry, by_bridge=True) if index and reverted.get(entries[index - 1].key) == entry.crm_stage
                       else entry for index, entry in enumerate(entries)]
        semantic = str(raw.get("STAGE_SEMANTIC_ID") or "")
        if stage == WON or (stage is None and semantic == "S"):
            outcome = Outcome.WON
        elif stage == LOST or (stage is None and semantic == "F"):
            outcome = Outcome.LOST
        else:
            outcome = Outcome.OPEN
        fields = {}
        get = raw.get
        for field_id, crm_field, read in self.readers:
            crm_value = get(crm_field)
            if crm_value is None or crm_value == "" or crm_value == []:
                continue  # most fields of most deals are empty (False is "no" to a yes/no field: its reader decides)
            value = read(crm_value)
            if value.value is not None or value.problem is not None:
                fields[field_id] = value
        contact_card = contact if isinstance(contact, Client) else self._card(contact, "contact")
        company_card = company if isinstance(company, Client) else self._card(company, "company")
        for field_id, kind in self.client_fields:
            found = [value for card in (contact_card, company_card) if card is not None
                     for value in (card.phones if kind == "phone" else card.emails)]
            if found:
                fields[field_id] = FieldValue(found[0], found[0])
        probability = _whole(raw.get("PROBABILITY"))
        amount = _decimal(raw.get("OPPORTUNITY"))
        return Deal(
            id=str(raw.get("ID") or ""),
            title=str(raw.get("TITLE") or ""),
            direction=direction,
            stage=stage,
            crm_stage=crm_stage,
            outcome=outcome,
            manager=str(raw.get("ASSIGNED_BY_ID") or "") or None,
            created=created,
            modified=parse_moment(raw.get("DATE_MODIFY"), zone),
            last_activity=None if own_users and str(raw.get("LAST_ACTIVITY_BY") or "") in own_users
            else parse_moment(raw.get("LAST_ACTIVITY_TIME"), zone),
            closed_at=parse_moment(raw.get("CLOSEDATE"), zone) if str(raw.get("CLOSED")) == "Y" else None,
            amount=amount,
            probability=probability,
            fields=fields,
            history=tuple(entries),
            tasks=self._tasks(tasks, todos),
            contact=contact_card,
            company=company_card,
            ignored=direction is None and category in self.ignored,
        )

    def deals(self, records: DealRecords) -> list[Deal]:
        """Cached deals with their history, tasks, to-dos and clients -> Deals (each client mapped once)."""
        with paused_gc():
            contacts = {key: self.client(row, "contact") for key, row in records.contacts.items()}
            companies = {key: self.client(row, "company") for key, row in records.companies.items()}
            deals = []
            for deal_id, raw, contact_id, company_id in records.deals:
                deals.append(self.deal(raw, records.history.get(deal_id, ()), records.tasks.get(deal_id, ()),
                                       contacts.get(contact_id), companies.get(company_id), records.todos.get(deal_id, ()),
                                       own_users=records.own_users, reverted=records.reverted.get(deal_id)))
            return deals

    def stream(self, chunks: Iterable[DealRecords]) -> Iterator[Deal]:
        """`deals()` over chunks of cached deals (`Deals.iter_records`), one Deal at a time: only the chunk being
        mapped is held. A client comes with the first chunk that names it and is kept (mapped once) for the rest."""
        contacts: dict[str, Client | None] = {}
        companies: dict[str, Client | None] = {}
        for records in chunks:
            with paused_gc():
                contacts.update((key, self.client(row, "contact")) for key, row in records.contacts.items())
                companies.update((key, self.client(row, "company")) for key, row in records.companies.items())
                history, tasks, todos, own_users = records.history, records.tasks, records.todos, records.own_users
                mapped = [self.deal(raw, history.get(deal_id, ()), tasks.get(deal_id, ()), contacts.get(contact_id),
                                    companies.get(company_id), todos.get(deal_id, ()), own_users=own_users)
                          for deal_id, raw, contact_id, company_id in records.deals]
            del records
            yield from mapped
