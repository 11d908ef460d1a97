"""Deterministic seeding of the sandbox portal: realistic deals, contacts, companies, stage history and tasks.

About 30% of deals break the regulation in `catalog.REQUIRED_BY_STAGE` and the rules below, each
recorded in `PortalState.planted[deal_id]` (ground truth for tests and demos):

    skipped_stage          history jumps over an intermediate stage of the deal's pipeline
    required_uf_empty      a user field required by a stage the deal reached is empty
    probability_mismatch   PROBABILITY differs from the stage's (pipeline 0 only: 10/25/50/75/90, won 100)
    lost_no_next_contact   lost with "Нет интереса сейчас" (123) and no UF_CRM_1700000115
    no_stage_task          an open deal without an open task (status 2/3) bound to it
    stale                  an open deal whose stage has not moved for 60+ days
    won_no_payment_date    won more than 72 h ago and UF_CRM_1700000117 is empty
    overdue_receivable     at an invoice stage with UF_CRM_1700000118 in the past
    lead_not_contacted     UF_CRM_1700000119 empty or more than 1 h after DATE_CREATE

Clean deals satisfy all of them. About 12% of pipeline-2 deals were opened in pipeline 1 and moved
over (history: TYPE_ID 1 in C1:NEW, then TYPE_ID 5 into C2:NEW). Ids follow creation time (as on a real portal), so `>ID` and
`DATE_CREATE` orders agree.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

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
_TASK_ACTIONS = {
    "P": ("Связаться с клиентом", "Подготовить КП", "Назначить встречу", "Отправить договор", "Уточнить потребности"),
}
_TRANSLIT = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i", "й": "y",
    "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f",
    "х": "h", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
})

_PROCESS = {cat: c.process_stages(cat) for cat in c.STAGES}
_WON = {cat: c.won_stage(cat) for cat in c.STAGES}
_LOSE = {cat: c.lose_stage(cat) for cat in c.STAGES}
_APOLOGY = c.STAGE_BY_ID["APOLOGY"]


def _phone(rng: random.Random) -> str:
    return f"+79{rng.randrange(10, 99)}{rng.randrange(1000000, 9999999)}"


def _email(rng: random.Random, last: str, n: int) -> str:
    domain = rng.choice(("mail.ru", "yandex.ru", "gmail.com", "company.ru", "bk.ru"))
    return f"{last.lower().translate(_TRANSLIT)}.{n}@{domain}"


def _multi(kind: str, value: str, fm_id: int, value_type: str) -> dict[str, str]:
    return {"ID": str(fm_id), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": kind}


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
    company_times = sorted(now - horizon - rng.uniform(0, 200 * DAY) + rng.uniform(0, horizon) for _ in range(n_companies))
    for cid, created in enumerate(company_times, start=1):
        title = f"{rng.choice(_COMPANY_FORMS)} «{rng.choice(_COMPANY_WORDS)}{'' if rng.random() < 0.6 else ' ' + str(rng.randrange(2, 99))}»"
        has_phone = rng.random() < 0.85
        has_email = rng.random() < 0.7
        created_s = fmt_dt(created)
        state.companies.insert(cid, {
            "ID": str(cid), "TITLE": title, "COMPANY_TYPE": "CUSTOMER", "INDUSTRY": rng.choice(_INDUSTRIES),
            "EMPLOYEES": rng.choice(("EMPLOYEES_1", "EMPLOYEES_2", "EMPLOYEES_3", "EMPLOYEES_4")),
            "REVENUE": f"{rng.randrange(1, 500) * 1000000}.00", "CURRENCY_ID": "RUB",
            "ASSIGNED_BY_ID": str(rng.choice(c.B2B_MANAGERS)), "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
            "DATE_CREATE": created_s, "DATE_MODIFY": created_s, "OPENED": "Y",
            "HAS_PHONE": "Y" if has_phone else "N", "HAS_EMAIL": "Y" if has_email else "N", "HAS_IMOL": "N",
            "COMMENTS": None, "LAST_ACTIVITY_TIME": created_s,
            "PHONE": [_multi("PHONE", _phone(rng), next_fm(), "WORK")] if has_phone else [],
            "EMAIL": [_multi("EMAIL", f"info{cid}@{rng.choice(('company.ru', 'corp.ru', 'group.ru'))}", next_fm(), "WORK")]
            if has_email else [],
        })

    contact_times = sorted(now - horizon - rng.uniform(0, 100 * DAY) + rng.uniform(0, horizon) for _ in range(n_contacts))
    contact_names: dict[int, str] = {}
    for pid, created in enumerate(contact_times, start=1):
        female = rng.random() < 0.45
        last = rng.choice(_LAST_NAMES) + ("а" if female else "")
        first = rng.choice(_FIRST_NAMES_F if female else _FIRST_NAMES_M)
        contact_names[pid] = last
        roll = rng.random()
        # ~15% of contacts have neither phone nor e-mail, so "no way to reach the client" cases exist
        has_phone = roll < 0.70
        has_email = 0.45 < roll < 0.85
        created_s = fmt_dt(created)
        state.contacts.insert(pid, {
            "ID": str(pid), "NAME": first, "SECOND_NAME": None, "LAST_NAME": last, "POST": None,
            "TYPE_ID": "CLIENT", "SOURCE_ID": rng.choice(c.SOURCES)[0],
            "COMPANY_ID": str(rng.randrange(1, n_companies + 1)) if rng.random() < 0.5 else None,
            "ASSIGNED_BY_ID": str(rng.randrange(2, 9)), "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
            "DATE_CREATE": created_s, "DATE_MODIFY": created_s, "OPENED": "Y", "EXPORT": "Y",
            "HAS_PHONE": "Y" if has_phone else "N", "HAS_EMAIL": "Y" if has_email else "N", "HAS_IMOL": "N",
            "COMMENTS": None, "LAST_ACTIVITY_TIME": created_s,
            "PHONE": [_multi("PHONE", _phone(rng), next_fm(), rng.choice(("WORK", "MOBILE")))] if has_phone else [],
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
    for deal_id, (created, category, outcome) in enumerate(specs, start=1):
        _build_deal(state, rng, deal_id, created, category, outcome, now,
                    n_companies, n_contacts, contact_names, events, tasks, formatted)

    # stage history and tasks get ids in time order, as a real portal's autoincrement would
    events.sort(key=lambda e: (e[0], e[1]))
    history = state.history
    for hid, (ts, owner, type_id, category, stage) in enumerate(events, start=1):
        history.rows[hid] = {
            "ID": hid, "TYPE_ID": type_id, "OWNER_ID": owner, "CREATED_TIME": formatted(ts),
            "CATEGORY_ID": category, "STAGE_SEMANTIC_ID": stage.semantics, "STAGE_ID": stage.status_id,
        }
        history.ids.append(hid)
    tasks.sort(key=lambda t: t[0])
    for tid, (_, task) in enumerate(tasks, start=1):
        task["id"] = str(tid)
        state.tasks.rows[tid] = task
        state.tasks.ids.append(tid)


def _build_deal(
    state: PortalState, rng: random.Random, deal_id: int, created: float, category: int, outcome: str, now: float,
    n_companies: int, n_contacts: int, contact_names: dict[int, str],
    events: list[tuple[float, int, int, int, Any]], tasks: list[tuple[float, dict[str, Any]]],
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
    if rng.random() < VIOLATION_SHARE:
        applicable = ["lead_not_contacted"]
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
        kinds.append(rng.choice(applicable))
        if rng.random() < 0.2:
            second = rng.choice(applicable)
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
            del history_path[rng.choice(candidates)]
        else:
            kinds.remove("skipped_stage")
    first_index = 0
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
        assigned = rng.choice(c.B2B_MANAGERS)
        if outcome != "open" and now - created > 180 * DAY and rng.random() < 0.15:
            assigned = c.FIRED_MANAGER  # the fired manager still owns some old closed deals
    elif category == 3:
        assigned = rng.choice(c.B2C_MANAGERS)
    else:
        assigned = 1 if rng.random() < 0.05 else rng.randrange(2, 9)
    contact_id = rng.randrange(1, n_contacts + 1)
    company_id = rng.randrange(1, n_companies + 1) if category != 3 else 0
    low, high = {0: (150_000, 3_000_000), 1: (50_000, 800_000), 2: (30_000, 600_000), 3: (3_000, 80_000)}[category]
    amount = round(rng.uniform(low, high), -2)
    if rng.random() < 0.15:
        amount -= 0.01  # shop-style prices such as 19999.99 exist too
    if category == 3:
        title = f"Заказ №{10000 + deal_id} — {contact_names.get(contact_id, 'Клиент')}"
    else:
        title = f"{rng.choice(_PRODUCTS)} #{deal_id}"

    probability = current.probability
    if "probability_mismatch" in kinds:
        probability = rng.choice([p for p in (5, 15, 20, 30, 40, 60, 80, 95) if p != current.probability])

    # --- user fields, filled as the deal passed each stage ---------------------------------------
    ufs: dict[str, str] = {}
    for stage in path:
        entered = enter[stage.status_id]
        for name in c.REQUIRED_BY_STAGE.get(stage.status_id, ()):
            ufs[name] = _uf_value(rng, name, deal_id, amount, entered, now, stage, current)
    if current.semantics == "F":
        if ufs.get(c.UF_LOSS_REASON) == c.LOSS_NO_INTEREST_NOW or "lost_no_next_contact" in kinds:
            ufs[c.UF_LOSS_REASON] = c.LOSS_NO_INTEREST_NOW
            if "lost_no_next_contact" not in kinds:
                ufs[c.UF_NEXT_CONTACT] = fmt_date(end + rng.uniform(20 * DAY, 120 * DAY))
    if "won_no_payment_date" in kinds:
        ufs.pop(c.UF_PAID_DATE, None)
    if "overdue_receivable" in kinds:
        ufs[c.UF_PAY_DUE] = fmt_date(now - rng.uniform(DAY, 40 * DAY))
    if "required_uf_empty" in kinds:
        required = [n for s in path for n in c.REQUIRED_BY_STAGE.get(s.status_id, ())
                    if n not in (c.UF_PAID_DATE, c.UF_PAY_DUE, c.UF_LOSS_REASON)]
        if required:
            ufs.pop(rng.choice(required), None)
        else:
            kinds.remove("required_uf_empty")
    if "lead_not_contacted" in kinds:
        if rng.random() < 0.5:
            ufs[c.UF_FIRST_CONTACT] = fmt_dt(created + rng.uniform(1.2 * HOUR, 30 * HOUR)) or ""
    else:
        ufs[c.UF_FIRST_CONTACT] = fmt_dt(created + rng.uniform(180, 55 * 60)) or ""

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
        "TYPE_ID": "SALE" if category == 3 else rng.choice(("SALE", "COMPLEX", "SERVICES")),
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
        "SOURCE_ID": rng.choice(c.SOURCES)[0],
        "LAST_ACTIVITY_TIME": modified_s,
        "LAST_ACTIVITY_BY": str(assigned),
    })
    row.update(ufs)
    state.deals.rows[deal_id] = row
    state.deals.ids.append(deal_id)
    if kinds:
        state.planted[deal_id] = kinds

    # --- tasks: one completed task for the previous stage, one open task for the current ---------
    binding = [f"D_{deal_id}"]
    if len(path) >= 2:
        prev = path[-2]
        _add_task(tasks, rng, fmt, prev, binding, assigned, enter[prev.status_id], end, status="5", title_of=title)
    if outcome == "open":
        if "no_stage_task" not in kinds:
            _add_task(tasks, rng, fmt, current, binding, assigned, end, None, status=rng.choice(("2", "3")),
                      title_of=title, deadline=now + rng.uniform(DAY, 10 * DAY))
    elif len(path) < 2:
        _add_task(tasks, rng, fmt, current, binding, assigned, created, end, status="5", title_of=title)


def _memo_fmt() -> Any:
    """fmt_dt with a cache: stage entries and task dates share timestamps, format each once."""
    cache: dict[float, str | None] = {}

    def formatted(ts: float) -> str | None:
        value = cache.get(ts)
        if value is None:
            value = cache[ts] = fmt_dt(ts)
        return value
    return formatted


def _add_task(tasks: list[tuple[float, dict[str, Any]]], rng: random.Random, fmt: Any, stage: Any, binding: list[str],
              responsible: int, created: float, closed: float | None, *, status: str, title_of: str,
              deadline: float | None = None) -> None:
    task = blank_task()
    created_s = fmt(created)
    changed_s = fmt(closed) if closed is not None else created_s
    task.update({
        "title": f"{rng.choice(_TASK_ACTIONS['P'])} ({stage.name})",
        "description": f"Сделка: {title_of}",
        "status": status,
        "priority": rng.choice(("1", "1", "2")),
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
        return rng.choice(("131", "132", "133"))
    if name == c.UF_INTEREST:
        return "101"
    if name == c.UF_BUDGET:
        return str(int(round(amount * rng.uniform(1.0, 2.0), -3)))
    if name == c.UF_LPR:
        return f"{rng.choice(_FIRST_NAMES_M)} {rng.choice(_LAST_NAMES)}, генеральный директор"
    if name == c.UF_NEEDS:
        return rng.choice(_NEEDS)
    if name in (c.UF_FIRST_MEETING, c.UF_PRESENTATION, c.UF_KP_DATE, c.UF_SIGN_DATE):
        return fmt_date(entered)
    if name == c.UF_TZ_URL:
        return f"https://docs.sandbox.example/tz/{deal_id}"
    if name in (c.UF_KP_SUM, c.UF_CONTRACT_SUM):
        return str(int(amount)) if float(amount).is_integer() else str(amount)
    if name == c.UF_CONTRACT_NO:
        return f"Д-{datetime.fromtimestamp(entered, PORTAL_TZ).year}/{deal_id}"
    if name == c.UF_PAY_TERMS:
        return rng.choice(("111", "112", "113"))
    if name == c.UF_PAY_DUE:
        if stage is current:
            return fmt_date(now + rng.uniform(DAY, 25 * DAY))  # still at the invoice stage: not yet due
        return fmt_date(entered + rng.uniform(5 * DAY, 30 * DAY))
    if name == c.UF_PAID_DATE:
        return fmt_date(min(entered + rng.uniform(0, DAY), now))
    if name == c.UF_LOSS_REASON:
        return rng.choice(("121", "122", "123", "124"))
    return ""
