"""Deterministic seeding of the sandbox portal: realistic deals, contacts, companies, stage history and tasks.

About 30% of deals break the regulation in `catalog.REQUIRED_BY_STAGE` and the rules below, each
recorded in `PortalState.planted[deal_id]` (ground truth for tests and demos):

    skipped_stage          history jumps over an intermediate stage of the deal's pipeline       (R1)
    required_uf_empty      a user field required by a stage the deal reached is empty              (R2)
    no_stage_task          an open deal without its stage's task (exact title) bound to it         (R3)
    probability_mismatch   PROBABILITY differs from the stage's (pipeline 0: 10/25/50/75/90, 100) (R4)
    lost_no_next_contact   lost with "Нет интереса сейчас" (123) and no UF_CRM_1700000115          (R5)
    no_contact_data        from the R6 stage on (or won), contact + company lack a phone or e-mail  (R6)
    lead_not_contacted     UF_CRM_1700000119 empty, or later than 1 h of working time (not pipeline 2) (R7)
    won_no_payment_date    won more than 72 h ago and UF_CRM_1700000117 is empty                    (R8)
    overdue_receivable     not lost, unpaid, UF_CRM_1700000118 in the past                          (R9)
    stale                  an open deal with no move and no activity for 60+ days                   (R11)

The rules are those of mappings/regulation.yaml (R1..R11); `catalog` holds the stage fields, stage
task titles and the business calendar they use. R10 (client segments, audit mode) is not planted.

Clean deals satisfy all of them (checked against crmbridge.regulation: planted == found, per rule).
About 12% of pipeline-2 deals were opened in pipeline 1 and moved over (history: TYPE_ID 1 in C1:NEW,
then TYPE_ID 5 into C2:NEW). Ids follow creation time (as on a real portal), so `>ID` and
`DATE_CREATE` orders agree.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

from . import catalog as c
from .state import PortalState, blank_deal, blank_task
from .wire import PORTAL_TZ, fmt_date, fmt_day_dt, fmt_dt

DAY = 86400.0
HOUR = 3600.0

VIOLATION_SHARE = 0.30

_LAST_NAMES = ("Иванов", "Петров", "Сидоров", "Смирнов", "Кузнецов", "Попов", "Васильев", "Новиков", "Фёдоров",
               "Морозов", "Волков", "Алексеев", "Лебедев", "Семёнов", "Егоров", "Павлов", "Козлов", "Степанов",
               "Николаев", "Орлов", "Андреев", "Макаров", "Никитин", "Захаров", "Зайцев", "Соловьёв", "Борисов")
_FIRST_NAMES_M = ("Александр", "Дмитрий", "Максим", "Сергей", "Андрей", "Алексей", "Артём", "Илья", "Кирилл",
                  "Михаил", "Никита", "Роман", "Егор", "Иван", "Владимир", "Павел", "Олег", "Юрий")
_FIRST_NAMES_F = ("Анна", "Мария", "Елена", "Ольга", "Наталья", "Татьяна", "Ирина", "Светлана", "Екатерина",
                  "Юлия", "Дарья", "Алина", "Ксения", "Виктория", "Полина")
_COMPANY_WORDS = ("Ромашка", "Вектор", "Гранит", "Север", "Альфа-Строй", "ТехноПром", "Меридиан", "Сфера",
                  "Прогресс", "Капитал", "Энергия", "Интеграл", "Горизонт", "Профи", "Стандарт", "Лидер",
                  "Орион", "Атлант", "Феникс", "Дельта", "Монолит", "Континент", "Восток", "Урал", "Балтика")
_COMPANY_FORMS = ("ООО", "ООО", "ООО", "АО", "ПАО", "ИП")
_INDUSTRIES = ("IT", "MANUFACTURING", "BANKING", "CONSULTING", "DELIVERY", "ENTERTAINMENT", "GOVERNMENT", "OTHER")
_PRODUCTS = ("Внедрение CRM", "Поставка оборудования", "Аудит процессов", "Годовая подписка", "Интеграция с 1С",
             "Обучение сотрудников", "Техподдержка", "Разработка портала", "Миграция данных", "Аналитика продаж")
_NEEDS = ("Автоматизация отдела продаж, 12 менеджеров", "Учёт заявок и счетов", "Единая база клиентов",
          "Интеграция телефонии и почты", "Контроль дебиторки", "Отчётность для руководителя")
_TRANSLIT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i", "й": "y",
    "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f",
    "х": "h", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
})

_PROCESS = {cat: c.process_stages(cat) for cat in c.STAGES}
_WON = {cat: c.won_stage(cat) for cat in c.STAGES}
_LOSE = {cat: c.lose_stage(cat) for cat in c.STAGES}
_APOLOGY = c.STAGE_BY_ID["APOLOGY"]


def _pick(rng: random.Random, seq: Any) -> Any:
    """rng.choice without its rejection-sampling loop: seeding calls this ~15 times per deal."""
    return seq[int(rng.random() * len(seq))]


def _phone(rng: random.Random) -> str:
    return f"+79{rng.randrange(10, 99)}{rng.randrange(1000000, 9999999)}"


def _email(rng: random.Random, last: str, n: int) -> str:
    domain = _pick(rng, ("mail.ru", "yandex.ru", "gmail.com", "company.ru", "bk.ru"))
    return f"{last.lower().translate(_TRANSLIT)}.{n}@{domain}"


def _multi(kind: str, value: str, fm_id: int, value_type: str) -> dict[str, str]:
    return {"ID": str(fm_id), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": kind}


def _local_day(ts: float) -> date:
    return datetime.fromtimestamp(ts, PORTAL_TZ).date()


def _is_workday(day: date) -> bool:
    return day.weekday() < 5 and day.isoformat() not in c.HOLIDAYS


def working_seconds(start: float, end: float) -> float:
    """Working time (Mon-Fri 09-18 MSK minus holidays) between two moments, as the R7 timer counts it."""
    total = 0.0
    day = _local_day(start)
    last = _local_day(end)
    while day <= last:
        if _is_workday(day):
            opens = datetime(day.year, day.month, day.day, c.WORK_START_HOUR, tzinfo=PORTAL_TZ).timestamp()
            closes = datetime(day.year, day.month, day.day, c.WORK_END_HOUR, tzinfo=PORTAL_TZ).timestamp()
            total += max(0.0, min(end, closes) - max(start, opens))
        day += timedelta(days=1)
    return total


def add_working(start: float, seconds: float) -> float:
    """The moment when `seconds` of working time have passed since `start`."""
    day = _local_day(start)
    left = seconds
    while True:
        if _is_workday(day):
            opens = datetime(day.year, day.month, day.day, c.WORK_START_HOUR, tzinfo=PORTAL_TZ).timestamp()
            closes = datetime(day.year, day.month, day.day, c.WORK_END_HOUR, tzinfo=PORTAL_TZ).timestamp()
            begin = max(start, opens)
            if begin < closes:
                if begin + left <= closes:
                    return begin + left
                left -= closes - begin
        day += timedelta(days=1)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year = day.year + month // 12
    month = month % 12 + 1
    last_day = [31, 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28, 31, 30, 31, 30,
                31, 31, 30, 31, 30, 31][month - 1]
    return date(year, month, min(day.day, last_day))


def seed_portal(state: PortalState, *, deals: int, seed: int, now: float) -> None:
    """Fill `state` with `deals` deals and their surroundings; same seed -> same portal (relative to `now`)."""
    rng = random.Random(seed)
    fm_counter = [0]

    def next_fm() -> int:
        fm_counter[0] += 1
        return fm_counter[0]

    # --- companies and contacts: created before most deals, ids in creation order -------------
    n_companies = max(20, deals // 10)
    n_contacts = max(50, deals // 3)
    horizon = 560 * DAY
    companies_with_email: list[int] = []
    companies_without_email: list[int] = []
    company_times = sorted(now - horizon - rng.uniform(0, 200 * DAY) + rng.uniform(0, horizon) for _ in range(n_companies))
    for cid, created in enumerate(company_times, start=1):
        title = f"{_pick(rng, _COMPANY_FORMS)} «{_pick(rng, _COMPANY_WORDS)}{'' if rng.random() < 0.6 else ' ' + str(rng.randrange(2, 99))}»"
        has_phone = rng.random() < 0.85
        has_email = rng.random() < 0.7
        (companies_with_email if has_email else companies_without_email).append(cid)
        created_s = fmt_dt(created)
        state.companies.insert(cid, {
            "ID": str(cid), "TITLE": title, "COMPANY_TYPE": "CUSTOMER", "INDUSTRY": _pick(rng, _INDUSTRIES),
            "EMPLOYEES": _pick(rng, ("EMPLOYEES_1", "EMPLOYEES_2", "EMPLOYEES_3", "EMPLOYEES_4")),
            "REVENUE": f"{rng.randrange(1, 500) * 1000000}.00", "CURRENCY_ID": "RUB",
            "ASSIGNED_BY_ID": str(_pick(rng, c.B2B_MANAGERS)), "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
            "DATE_CREATE": created_s, "DATE_MODIFY": created_s, "OPENED": "Y",
            "HAS_PHONE": "Y" if has_phone else "N", "HAS_EMAIL": "Y" if has_email else "N", "HAS_IMOL": "N",
            "COMMENTS": None, "LAST_ACTIVITY_TIME": created_s,
            "PHONE": [_multi("PHONE", _phone(rng), next_fm(), "WORK")] if has_phone else [],
            "EMAIL": [_multi("EMAIL", f"info{cid}@{_pick(rng, ('company.ru', 'corp.ru', 'group.ru'))}", next_fm(), "WORK")]
            if has_email else [],
        })

    contact_times = sorted(now - horizon - rng.uniform(0, 100 * DAY) + rng.uniform(0, horizon) for _ in range(n_contacts))
    contact_names: dict[int, str] = {}
    full_contacts: list[int] = []  # phone and e-mail: what R6 asks for
    phone_only_contacts: list[int] = []
    other_contacts: list[int] = []
    for pid, created in enumerate(contact_times, start=1):
        female = rng.random() < 0.45
        last = _pick(rng, _LAST_NAMES) + ("а" if female else "")
        first = _pick(rng, _FIRST_NAMES_F if female else _FIRST_NAMES_M)
        contact_names[pid] = last
        roll = rng.random()
        # ~15% of contacts have neither phone nor e-mail, so "no way to reach the client" cases exist
        has_phone = roll < 0.70
        has_email = 0.45 < roll < 0.85
        if has_phone and has_email:
            full_contacts.append(pid)
        elif has_phone:
            phone_only_contacts.append(pid)
        else:
            other_contacts.append(pid)
        created_s = fmt_dt(created)
        state.contacts.insert(pid, {
            "ID": str(pid), "NAME": first, "SECOND_NAME": None, "LAST_NAME": last, "POST": None,
            "TYPE_ID": "CLIENT", "SOURCE_ID": _pick(rng, c.SOURCES)[0],
            "COMPANY_ID": str(rng.randrange(1, n_companies + 1)) if rng.random() < 0.5 else None,
            "ASSIGNED_BY_ID": str(rng.randrange(2, 9)), "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
            "DATE_CREATE": created_s, "DATE_MODIFY": created_s, "OPENED": "Y", "EXPORT": "Y",
            "HAS_PHONE": "Y" if has_phone else "N", "HAS_EMAIL": "Y" if has_email else "N", "HAS_IMOL": "N",
            "COMMENTS": None, "LAST_ACTIVITY_TIME": created_s,
            "PHONE": [_multi("PHONE", _phone(rng), next_fm(), _pick(rng, ("WORK", "MOBILE")))] if has_phone else [],
            "EMAIL": [_multi("EMAIL", _email(rng, last, pid), next_fm(), "WORK")] if has_email else [],
        })

    # --- deal specs first, so ids can follow creation time ---------------------------------------
    specs: list[tuple[float, int, str]] = []  # (created, category, outcome)
    for _ in range(deals):
        r = rng.random()
        category = 0 if r < 0.40 else 1 if r < 0.65 else 2 if r < 0.80 else 3
        o = rng.random()
        outcome = "open" if o < 0.45 else "won" if o < 0.75 else "lost"
        if outcome == "open":
            created = now - rng.uniform(2 * DAY, 170 * DAY)
        else:
            created = now - rng.uniform(6 * DAY, 545 * DAY)
        specs.append((created, category, outcome))
    specs.sort(key=lambda s: s[0])

    events: list[tuple[float, int, int, int, Any]] = []  # (time, deal id, type id, category, stage)
    tasks: list[tuple[float, dict[str, Any]]] = []
    formatted = _memo_fmt()  # deals, history and tasks share timestamps: format (and store) each once
    people = _People(full_contacts or phone_only_contacts or other_contacts, phone_only_contacts or other_contacts,
                     list(range(1, n_contacts + 1)), companies_with_email or list(range(1, n_companies + 1)),
                     companies_without_email, list(range(1, n_companies + 1)), contact_names)
    for deal_id, (created, category, outcome) in enumerate(specs, start=1):
        _build_deal(state, rng, deal_id, created, category, outcome, now, people, events, tasks, formatted)

    # stage history and tasks get ids in time order, as a real portal's autoincrement would
    events.sort(key=itemgetter(0, 1))
    history = state.history
    for hid, (ts, owner, type_id, category, stage) in enumerate(events, start=1):
        history.rows[hid] = {
            "ID": hid, "TYPE_ID": type_id, "OWNER_ID": owner, "CREATED_TIME": formatted(ts),
            "CATEGORY_ID": category, "STAGE_SEMANTIC_ID": stage.semantics, "STAGE_ID": stage.status_id,
        }
        history.ids.append(hid)
    tasks.sort(key=itemgetter(0))
    for tid, (_, task) in enumerate(tasks, start=1):
        task["id"] = str(tid)
        state.tasks.rows[tid] = task
        state.tasks.ids.append(tid)
    seed_kpi_data(state, seed=seed, now=now)


class _People(NamedTuple):
    """Contacts and companies grouped by what R6 looks at (phone and e-mail on the client's cards)."""

    full_contacts: list[int]
    phone_only_contacts: list[int]
    all_contacts: list[int]
    companies_with_email: list[int]
    companies_without_email: list[int]
    all_companies: list[int]
    contact_names: dict[int, str]


def _build_deal(
    state: PortalState, rng: random.Random, deal_id: int, created: float, category: int, outcome: str, now: float,
    people: _People, events: list[tuple[float, int, int, int, Any]], tasks: list[tuple[float, dict[str, Any]]],
    fmt: Any,
) -> None:
    process = _PROCESS[category]
    if outcome == "open":
        # a deal still in its first stage long after creation would be stale: older open deals have moved on
        first = 0 if now - created < 40 * DAY else 1
        reached = rng.randrange(first, len(process))
        path = process[:reached + 1]
    elif outcome == "won":
        path = process + [_WON[category]]
    else:
        reached = rng.randrange(len(process))
        final = _APOLOGY if category == 0 and rng.random() < 0.1 else _LOSE[category]
        path = process[:reached + 1] + [final]
    current = path[-1]

    # which rules this deal breaks
    kinds: list[str] = []
    position = process.index(current) if current in process else len(process)
    needs_contact_data = outcome == "won" or (
        outcome == "open" and position >= process.index(c.STAGE_BY_ID[c.CONTACT_DATA_FROM[category]]))
    if rng.random() < VIOLATION_SHARE:
        applicable = []
        # more than 6 days always hold a full working day (the longest break is 4 days); skip the day walk
        if category in c.FIRST_CONTACT_CATEGORIES and (now - created > 6 * DAY or working_seconds(created, now) > 2 * HOUR):
            applicable.append("lead_not_contacted")
        if needs_contact_data and people.phone_only_contacts:
            applicable.append("no_contact_data")
        proc_len = sum(1 for s in path if s.semantics == "P")
        if outcome == "open":
            applicable.append("no_stage_task")
            if now - created > 62 * DAY:
                applicable.append("stale")
            if current.status_id in c.INVOICE_STAGES:
                applicable.append("overdue_receivable")
            if proc_len >= 3:
                applicable.append("skipped_stage")
        if outcome == "won":
            applicable.append("won_no_payment_date")
            if len(process) >= 2:
                applicable.append("skipped_stage")
        if outcome == "lost":
            applicable.append("lost_no_next_contact")
        if category == 0 and outcome != "lost":
            applicable.append("probability_mismatch")
        if outcome != "lost" or len(path) > 1:
            applicable.append("required_uf_empty")
        kinds.append(_pick(rng, applicable))
        if rng.random() < 0.2:
            second = _pick(rng, applicable)
            if second not in kinds:
                kinds.append(second)

    # --- timeline --------------------------------------------------------------------------------
    # `created` is fixed (ids follow it); only the later moves are placed to fit the planted kinds
    if outcome == "open":
        if "stale" in kinds:
            last_move = rng.uniform(max(created + HOUR, now - 160 * DAY), now - 61 * DAY)
        else:
            last_move = now - rng.uniform(0.05 * DAY, 40 * DAY)
            if last_move < created:
                last_move = created + (now - created) * rng.uniform(0.3, 0.9)
        end = last_move
    else:
        end = min(created + rng.uniform(3 * DAY, 80 * DAY), now - rng.uniform(0.2 * DAY, 3 * DAY))
        if "won_no_payment_date" in kinds:
            end = max(min(end, now - rng.uniform(3.2 * DAY, 60 * DAY)), created + 0.5 * DAY)
    if len(path) == 1:
        times = [created]
        end = created
    else:
        inner = sorted(rng.uniform(created, end) for _ in range(len(path) - 2))
        times = [created] + inner + [end]
    enter = {stage.status_id: ts for stage, ts in zip(path, times)}

    history_path = list(zip(path, times))
    if "skipped_stage" in kinds:
        proc_positions = [i for i, (s, _) in enumerate(history_path) if s.semantics == "P"]
        # never the first stage and never the deal's current stage: an intermediate one goes missing
        candidates = [i for i in proc_positions if 0 < i < len(history_path) - 1]
        if candidates:
            del history_path[_pick(rng, candidates)]
        else:
            kinds.remove("skipped_stage")
    first_index = 0
    moved = created
    if category == 2 and len(history_path) >= 2 and "skipped_stage" not in kinds and rng.random() < 0.12:
        # some regular-client deals were opened in the new-client pipeline and moved over (TYPE_ID 5)
        first_stage, first_ts = history_path[0]
        moved = first_ts + (history_path[1][1] - first_ts) * rng.uniform(0.1, 0.5)
        events.append((first_ts, deal_id, 1, 1, _PROCESS[1][0]))
        events.append((moved, deal_id, 5, 2, first_stage))
        first_index = 1
    for i, (stage, ts) in enumerate(history_path[first_index:], start=first_index):
        type_id = 1 if i == 0 else (2 if stage.semantics == "P" else 3)
        events.append((ts, deal_id, type_id, category, stage))

    # --- participants and money -------------------------------------------------------------------
    if category in (1, 2):
        assigned = _pick(rng, c.B2B_MANAGERS)
        if outcome != "open" and now - created > 180 * DAY and rng.random() < 0.15:
            assigned = c.FIRED_MANAGER  # the fired manager still owns some old closed deals
    elif category == 3:
        assigned = _pick(rng, c.B2C_MANAGERS)
    else:
        assigned = 1 if rng.random() < 0.05 else rng.randrange(2, 9)
    if "no_contact_data" in kinds:
        # the client's cards together lack an e-mail: a phone-only contact, a company without e-mail
        contact_id = _pick(rng, people.phone_only_contacts)
        company_id = _pick(rng, people.companies_without_email) if category != 3 and people.companies_without_email else 0
    elif needs_contact_data:
        contact_id = _pick(rng, people.full_contacts)
        company_id = _pick(rng, people.all_companies) if category != 3 else 0
    else:
        contact_id = _pick(rng, people.all_contacts)
        company_id = _pick(rng, people.all_companies) if category != 3 else 0
    low, high = {0: (150_000, 3_000_000), 1: (50_000, 800_000), 2: (30_000, 600_000), 3: (3_000, 80_000)}[category]
    amount = round(rng.uniform(low, high), -2)
    if rng.random() < 0.15:
        amount -= 0.01  # shop-style prices such as 19999.99 exist too
    if category == 3:
        title = f"Заказ №{10000 + deal_id} — {people.contact_names.get(contact_id, 'Клиент')}"
    else:
        title = f"{_pick(rng, _PRODUCTS)} #{deal_id}"

    probability = current.probability
    if "probability_mismatch" in kinds:
        probability = _pick(rng, [p for p in (5, 15, 20, 30, 40, 60, 80, 95) if p != current.probability])

    # --- user fields, filled as the deal passed each stage ---------------------------------------
    ufs: dict[str, str] = {}
    for stage in path:
        entered = enter[stage.status_id]
        for name in c.REQUIRED_BY_STAGE.get(stage.status_id, ()):
            ufs[name] = _uf_value(rng, name, deal_id, amount, entered, now, stage, current)
    follow_up: float | None = None
    if current.semantics == "F":
        if ufs.get(c.UF_LOSS_REASON) == c.LOSS_NO_INTEREST_NOW or "lost_no_next_contact" in kinds:
            ufs[c.UF_LOSS_REASON] = c.LOSS_NO_INTEREST_NOW
            if "lost_no_next_contact" not in kinds:
                # R5: 3, 6 or 9 months after the refusal (7 days tolerance), with a follow-up task that day
                next_day = _add_months(_local_day(end), _pick(rng, (3, 6, 9))) + timedelta(days=rng.randint(-3, 3))
                ufs[c.UF_NEXT_CONTACT] = next_day.isoformat()
                follow_up = datetime(next_day.year, next_day.month, next_day.day, 10, tzinfo=PORTAL_TZ).timestamp()
    if "won_no_payment_date" in kinds:
        ufs.pop(c.UF_PAID_DATE, None)
        if category != 0 and "required_uf_empty" not in kinds:
            kinds.append("required_uf_empty")  # these pipelines also require the payment date to be won (R2)
    if "overdue_receivable" in kinds:
        ufs[c.UF_PAY_DUE] = fmt_date(now - rng.uniform(DAY, 40 * DAY))
    if "required_uf_empty" in kinds:
        required = [n for s in path for n in c.REQUIRED_BY_STAGE.get(s.status_id, ())
                    if n not in (c.UF_PAID_DATE, c.UF_PAY_DUE, c.UF_LOSS_REASON, c.UF_SEGMENT)]
        if required:
            ufs.pop(_pick(rng, required), None)
        else:
            kinds.remove("required_uf_empty")
    if "lead_not_contacted" in kinds:
        # late in working time too (R7 counts working hours), and never in the future
        late = add_working(created, rng.uniform(1.5 * HOUR, 12 * HOUR))
        if rng.random() < 0.5 and late < min(now, end if len(path) > 1 else now) - 60:
            ufs[c.UF_FIRST_CONTACT] = fmt_dt(late) or ""
    else:
        ufs[c.UF_FIRST_CONTACT] = fmt_dt(created + rng.uniform(180, 55 * 60)) or ""

    due = ufs.get(c.UF_PAY_DUE)
    if (outcome != "lost" and due and not ufs.get(c.UF_PAID_DATE) and due < fmt_date(now)
            and "overdue_receivable" not in kinds):
        kinds.append("overdue_receivable")

    modified = min(end + rng.uniform(0, 3 * DAY), now - 60)
    if outcome == "open" and "stale" not in kinds:
        modified = max(modified, end)
    created_s = fmt(created)
    moved_s = fmt(end)
    modified_s = fmt_dt(max(modified, end))
    row = blank_deal()
    row.update({
        "ID": str(deal_id),
        "TITLE": title,
        "TYPE_ID": "SALE" if category == 3 else _pick(rng, ("SALE", "COMPLEX", "SERVICES")),
        "CATEGORY_ID": str(category),
        "STAGE_ID": current.status_id,
        "STAGE_SEMANTIC_ID": current.semantics,
        "IS_NEW": "Y" if len(path) == 1 and outcome == "open" else "N",
        "IS_RETURN_CUSTOMER": "Y" if category == 2 else "N",
        "PROBABILITY": str(probability),
        "OPPORTUNITY": f"{amount:.2f}",
        "COMPANY_ID": str(company_id),
        "CONTACT_ID": str(contact_id),
        "BEGINDATE": fmt_day_dt(created),
        "CLOSEDATE": fmt_day_dt(end if outcome != "open" else now + rng.uniform(5 * DAY, 60 * DAY)),
        "CLOSED": "N" if outcome == "open" else "Y",
        "COMMENTS": None if rng.random() < 0.7 else "Клиент просил перезвонить после обеда",
        "ASSIGNED_BY_ID": str(assigned),
        "CREATED_BY_ID": str(assigned),
        "MODIFY_BY_ID": str(assigned),
        "MOVED_BY_ID": str(assigned),
        "DATE_CREATE": created_s,
        "DATE_MODIFY": modified_s,
        "MOVED_TIME": moved_s,
        "SOURCE_ID": _pick(rng, c.SOURCES)[0],
        "LAST_ACTIVITY_TIME": modified_s,
        "LAST_ACTIVITY_BY": str(assigned),
    })
    row.update(ufs)
    state.deals.rows[deal_id] = row
    state.deals.ids.append(deal_id)
    if kinds:
        state.planted[deal_id] = kinds

    # --- tasks: the regulation's stage task for every stage entered (R3), done before leaving -------
    binding = [f"D_{deal_id}"]
    entries = list(history_path)
    if first_index:
        entries[0] = (entries[0][0], moved)  # the first stage's task comes with the pipeline change
    for i, (stage, entered) in enumerate(entries):
        title_text = c.STAGE_TASK_TITLES.get(stage.status_id)
        if title_text is None or (category != 0 and stage.semantics == "S"):
            continue
        is_current = i == len(entries) - 1
        if is_current and stage.semantics == "P":
            if "no_stage_task" in kinds:
                continue
            _add_task(tasks, rng, fmt, title_text, binding, assigned, entered, None, status=_pick(rng, ("2", "3")),
                      title_of=title, deadline=now + rng.uniform(DAY, 10 * DAY))
        elif is_current:  # the won stage's own task (pipeline 0): closed once the 14 days are over
            closed = entered + 14 * DAY if entered + 14 * DAY < now else None
            _add_task(tasks, rng, fmt, title_text, binding, assigned, entered, closed,
                      status="5" if closed else "2", title_of=title, deadline=entered + 14 * DAY)
        else:
            leaves = entries[i + 1][1]
            _add_task(tasks, rng, fmt, title_text, binding, assigned, entered,
                      entered + (leaves - entered) * rng.uniform(0.5, 0.95), status="5", title_of=title)
    if follow_up is not None:
        _add_task(tasks, rng, fmt, c.FOLLOW_UP_TITLE, binding, assigned, end, None, status="2",
                  title_of=title, deadline=follow_up)


def _memo_fmt() -> Any:
    """fmt_dt with a cache: stage entries and task dates share timestamps, format each once."""
    cache: dict[float, str | None] = {}

    def formatted(ts: float) -> str | None:
        value = cache.get(ts)
        if value is None:
            value = cache[ts] = fmt_dt(ts)
        return value
    return formatted


def _add_task(tasks: list[tuple[float, dict[str, Any]]], rng: random.Random, fmt: Any, title: str, binding: list[str],
              responsible: int, created: float, closed: float | None, *, status: str, title_of: str,
              deadline: float | None = None) -> None:
    task = blank_task()
    created_s = fmt(created)
    changed_s = fmt(closed) if closed is not None else created_s
    task.update({
        "title": title,
        "description": f"Сделка: {title_of}",
        "status": status,
        "priority": _pick(rng, ("1", "1", "2")),
        "responsibleId": str(responsible),
        "createdBy": str(responsible),
        "createdDate": created_s,
        "changedBy": str(responsible),
        "changedDate": changed_s,
        "statusChangedDate": changed_s,
        "closedBy": str(responsible) if closed is not None else None,
        "closedDate": changed_s if closed is not None else None,
        "deadline": fmt_dt(deadline if deadline is not None else created + 3 * DAY),
        "ufCrmTask": binding,
    })
    tasks.append((created, task))


def _uf_value(rng: random.Random, name: str, deal_id: int, amount: float, entered: float, now: float,
              stage: Any, current: Any) -> str:
    if name == c.UF_SEGMENT:
        return _pick(rng, ("131", "132", "133"))
    if name == c.UF_INTEREST:
        return "101"
    if name == c.UF_BUDGET:
        return str(int(round(amount * rng.uniform(1.0, 2.0), -3)))
    if name == c.UF_LPR:
        return f"{_pick(rng, _FIRST_NAMES_M)} {_pick(rng, _LAST_NAMES)}, генеральный директор"
    if name == c.UF_NEEDS:
        return _pick(rng, _NEEDS)
    if name in (c.UF_FIRST_MEETING, c.UF_PRESENTATION, c.UF_KP_DATE, c.UF_SIGN_DATE):
        return fmt_date(entered)
    if name == c.UF_TZ_URL:
        return f"https://docs.sandbox.example/tz/{deal_id}"
    if name in (c.UF_KP_SUM, c.UF_CONTRACT_SUM):
        return str(int(amount)) if float(amount).is_integer() else str(amount)
    if name == c.UF_CONTRACT_NO:
        return f"Д-{datetime.fromtimestamp(entered, PORTAL_TZ).year}/{deal_id}"
    if name == c.UF_PAY_TERMS:
        return _pick(rng, ("111", "112", "113"))
    if name == c.UF_PAY_DUE:
        if stage is current:
            return fmt_date(now + rng.uniform(DAY, 25 * DAY))  # still at the invoice stage: not yet due
        return fmt_date(entered + rng.uniform(5 * DAY, 30 * DAY))
    if name == c.UF_PAID_DATE:
        return fmt_date(min(entered + rng.uniform(0, DAY), now))
    if name == c.UF_LOSS_REASON:
        return _pick(rng, ("121", "122", "123", "124"))
    return ""


# --- what the plans and KPIs read (issue 10) -----------------------------------------------------------
# Added after the regulation's data with an RNG of its own, so every value seeded above stays as it was:
# foreign-currency prices on a few project deals, margin and NPS on won deals, calls / meetings / e-mails,
# and the smart process that holds the B2C team's monthly plans.

_KPI_SALT = 104_729


def seed_kpi_data(state: PortalState, *, seed: int, now: float) -> None:
    rng = random.Random(seed * _KPI_SALT + 11)
    rates = {code: float(amount) / count for code, (count, amount, _, _) in c.CURRENCIES.items()}
    won_by_manager_month: dict[tuple[int, str], list[float]] = {}
    communications: list[tuple[float, dict[str, Any]]] = []
    for deal_id in state.deals.ids:
        row = state.deals.rows[deal_id]
        category = int(row["CATEGORY_ID"])
        amount = float(row["OPPORTUNITY"])
        if category == 0 and rng.random() < 0.06:
            # priced in a foreign currency: the same deal, its amounts in USD or EUR
            currency = "USD" if rng.random() < 0.6 else "EUR"
            row["CURRENCY_ID"] = currency
            amount = round(amount / rates[currency], 2)
            row["OPPORTUNITY"] = f"{amount:.2f}"
            for name in (c.UF_KP_SUM, c.UF_CONTRACT_SUM):
                if row.get(name):
                    row[name] = str(round(float(row[name]) / rates[currency], 2))
        if row["STAGE_SEMANTIC_ID"] == "S":
            margin = round(amount * rng.uniform(0.12, 0.42), 2)
            row[c.UF_MARGIN] = str(int(margin)) if margin.is_integer() else str(margin)
            if rng.random() < 0.75:
                row[c.UF_NPS] = str(_pick(rng, (10, 10, 9, 9, 9, 8, 8, 7, 6, 5, 3)))
            month = (row["CLOSEDATE"] or "")[:7]
            won_by_manager_month.setdefault((int(row["ASSIGNED_BY_ID"]), month), []).append(
                amount * rates[row["CURRENCY_ID"] or "RUB"])
        _seed_communications(rng, row, now, communications)
    communications.sort(key=itemgetter(0))
    first = state.activities.next_id()
    for offset, (_, activity) in enumerate(communications):
        activity["ID"] = str(first + offset)
        state.activities.rows[first + offset] = activity
        state.activities.ids.append(first + offset)
    _seed_plan_items(state, rng, now, won_by_manager_month)


_ACTIVITY_TEMPLATE: dict[str, Any] = {
    "ID": None, "PROVIDER_GROUP_ID": None, "ASSOCIATED_ENTITY_ID": "0", "PRIORITY": "2", "NOTIFY_TYPE": "0",
    "NOTIFY_VALUE": "0", "DESCRIPTION": "", "DESCRIPTION_TYPE": "1", "SETTINGS": [], "ORIGINATOR_ID": None,
    "ORIGIN_ID": None, "PROVIDER_PARAMS": [], "PROVIDER_DATA": None, "RESULT_MARK": "0", "RESULT_VALUE": None,
    "RESULT_SUM": None, "RESULT_CURRENCY_ID": None, "RESULT_STATUS": "0", "RESULT_STREAM": "0",
    "RESULT_SOURCE_ID": None, "AUTOCOMPLETE_RULE": "0",
}
_CALL_SUBJECTS = ("Звонок клиенту", "Входящий звонок", "Уточнение потребностей", "Звонок по КП", "Напоминание об оплате")
_MEETING_SUBJECTS = ("Встреча с ЛПР", "Презентация решения", "Демонстрация", "Обсуждение договора")
_EMAIL_SUBJECTS = ("Коммерческое предложение", "Счёт на оплату", "Re: вопросы по проекту", "Материалы встречи")


_KINDS = {2: ("VOXIMPLANT_CALL", "CALL", _CALL_SUBJECTS, 60.0, 840.0),
          1: ("CRM_MEETING", "MEETING", _MEETING_SUBJECTS, 1800.0, 3600.0),
          4: ("CRM_EMAIL", "EMAIL", _EMAIL_SUBJECTS, 0.0, 0.0)}


def _seed_communications(rng: random.Random, deal: dict[str, Any], now: float,
                         out: list[tuple[float, dict[str, Any]]]) -> None:
    """A deal's calls, meetings and e-mails while it was worked on (a few go to the contact, not the deal)."""
    random_ = rng.random
    calls, emails = int(random_() * 4), int(random_() * 3)
    meetings = int(random_() * 2) if deal["CATEGORY_ID"] in ("0", "1") else 0
    if not calls + emails + meetings:
        return
    created = datetime.fromisoformat(deal["DATE_CREATE"]).timestamp()
    closed = deal["CLOSED"] == "Y"
    end = datetime.fromisoformat(deal["MOVED_TIME"]).timestamp() if closed else now
    span = max(end, created + HOUR) - created
    manager = deal["ASSIGNED_BY_ID"]
    contact = deal.get("CONTACT_ID")
    has_contact = contact not in (None, "", "0")
    for type_id, count in ((2, calls), (4, emails), (1, meetings)):
        provider, provider_type, subjects, shortest, extra = _KINDS[type_id]
        for _ in range(count):
            start = created + span * random_()
            if not closed and random_() < 0.08:
                start = now + HOUR + 6 * DAY * random_()  # a planned call or meeting, not done yet
            on_contact = has_contact and random_() < 0.15
            duration = shortest + extra * random_()
            done = start + duration < now
            start_s = fmt_dt(start)
            end_s = fmt_dt(start + duration) if duration else start_s
            created_s = fmt_dt(min(start, now) - 2 * DAY * random_()) if type_id == 1 else fmt_dt(min(start, now))
            activity = dict(_ACTIVITY_TEMPLATE)
            activity.update({
                "OWNER_ID": contact if on_contact else deal["ID"], "OWNER_TYPE_ID": "3" if on_contact else "2",
                "TYPE_ID": str(type_id), "PROVIDER_ID": provider, "PROVIDER_TYPE_ID": provider_type,
                "SUBJECT": subjects[int(random_() * len(subjects))], "CREATED": created_s,
                "LAST_UPDATED": end_s if done else created_s, "START_TIME": start_s, "END_TIME": end_s,
                "DEADLINE": start_s, "COMPLETED": "Y" if done else "N", "STATUS": "2" if done else "1",
                "RESPONSIBLE_ID": manager, "AUTHOR_ID": manager, "EDITOR_ID": manager,
                "DIRECTION": "0" if type_id == 1 else ("1" if random_() < 0.35 else "2"),
                "LOCATION": "Офис клиента" if type_id == 1 else "",
            })
            out.append((min(start, now), activity))


def _seed_plan_items(state: PortalState, rng: random.Random, now: float,
                     won: dict[tuple[int, str], list[float]]) -> None:
    """The B2C team keeps its monthly plans in a smart process: revenue and won deals, 12 months back, 1 ahead."""
    today = _local_day(now)
    months = [_add_months(date(today.year, today.month, 1), offset) for offset in range(-12, 2)]
    item_id = 0
    for manager in c.B2C_MANAGERS:
        closed_months = [won.get((manager, f"{m.year}-{m.month:02d}"), []) for m in months[:-2]]
        revenue = sum(sum(amounts) for amounts in closed_months) / max(1, len(closed_months))
        deals = sum(len(amounts) for amounts in closed_months) / max(1, len(closed_months))
        for month in months:
            for option, target in ((301, round(revenue * rng.uniform(0.9, 1.25), -4)),
                                   (302, max(1, round(deals * rng.uniform(0.9, 1.3))))):
                item_id += 1
                stamp = fmt_dt(datetime(month.year, month.month, 1, 10, tzinfo=PORTAL_TZ).timestamp()
                               - 5 * DAY)
                state.plan_items.insert(item_id, {
                    "id": item_id, "xmlId": None, "title": f"План {manager} {month:%Y-%m}",
                    "createdBy": 1, "updatedBy": 1, "movedBy": 1, "createdTime": stamp, "updatedTime": stamp,
                    "movedTime": stamp, "categoryId": 11, "opened": "N", "stageId": "DT1038_11:NEW",
                    "previousStageId": "", "begindate": stamp, "closedate": stamp, "companyId": 0, "contactId": 0,
                    "opportunity": 0, "isManualOpportunity": "N", "taxValue": 0, "currencyId": "RUB",
                    "mycompanyId": 0, "sourceId": "", "sourceDescription": "", "webformId": 0,
                    "assignedById": manager, "lastActivityBy": 1, "lastActivityTime": stamp,
                    "entityTypeId": c.PLANS_ENTITY_TYPE_ID,
                    c.PLAN_FIELD_PERIOD: f"{month.year}-{month.month:02d}",
                    c.PLAN_FIELD_METRIC: option,
                    c.PLAN_FIELD_TARGET: float(target),
                })
