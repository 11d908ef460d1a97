"""Fixed reference data of the sandbox portal (users, pipelines, stages, user fields) with the stable ids of docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- users and departments (user.get, department.get) ------------------------------------------

@dataclass(frozen=True)
class User:
    id: int
    name: str
    last_name: str
    email: str
    department: int
    position: str
    active: bool = True


USERS: tuple[User, ...] = (
    User(1, "Администратор", "", "admin@sandbox.example", 1, "Руководитель отдела продаж"),
    User(2, "Ирина", "Соколова", "i.sokolova@sandbox.example", 2, "Руководитель B2B"),
    User(3, "Дмитрий", "Волков", "d.volkov@sandbox.example", 2, "Менеджер B2B"),
    User(4, "Елена", "Морозова", "e.morozova@sandbox.example", 2, "Менеджер B2B"),
    User(5, "Павел", "Никитин", "p.nikitin@sandbox.example", 2, "Менеджер B2B"),
    User(6, "Анна", "Лебедева", "a.lebedeva@sandbox.example", 3, "Менеджер B2C"),
    User(7, "Сергей", "Козлов", "s.kozlov@sandbox.example", 3, "Менеджер B2C"),
    User(8, "Мария", "Орлова", "m.orlova@sandbox.example", 3, "Менеджер B2C"),
    User(9, "Олег", "Фёдоров", "o.fedorov@sandbox.example", 2, "Менеджер B2B", active=False),
)

#: department id -> (name, parent id, head user id)
DEPARTMENTS: dict[int, tuple[str, int | None, int | None]] = {
    1: ("Отдел продаж", None, 1),
    2: ("B2B", 1, 2),
    3: ("B2C", 1, None),
}

B2B_MANAGERS = (2, 3, 4, 5)
B2C_MANAGERS = (6, 7, 8)
FIRED_MANAGER = 9

# --- pipelines and stages (crm.category.list, crm.status.list) ----------------------------------

#: CATEGORY_ID -> (name, sort)
CATEGORIES: dict[int, tuple[str, int]] = {
    0: ("Проектные продажи", 100),
    1: ("B2B новые клиенты", 200),
    2: ("B2B постоянные клиенты", 300),
    3: ("B2C", 400),
}


@dataclass(frozen=True, eq=False)  # stages are singletons: identity equality keeps seeding's list lookups cheap
class Stage:
    status_id: str
    name: str
    category: int
    sort: int
    semantics: str  # P, S or F (the deal's STAGE_SEMANTIC_ID)
    probability: int
    color: str


def _stages(category: int, rows: list[tuple[str, str, str, int]]) -> list[Stage]:
    colors = {"P": "#39A8EF", "S": "#7BD500", "F": "#FF00FF"}
    return [Stage(sid, name, category, (i + 1) * 10, sem, prob, colors[sem]) for i, (sid, name, sem, prob) in enumerate(rows)]


STAGES: dict[int, list[Stage]] = {
    0: _stages(0, [
        ("NEW", "Оценка", "P", 10),
        ("PREPARATION", "Позиционирование", "P", 25),
        ("PREPAYMENT_INVOICE", "Диагностика", "P", 50),
        ("EXECUTING", "Предложение", "P", 75),
        ("FINAL_INVOICE", "Подписание", "P", 90),
        ("WON", "Сделка успешна", "S", 100),
        ("LOSE", "Сделка провалена", "F", 0),
        ("APOLOGY", "Анализ причины провала", "F", 0),
    ]),
    1: _stages(1, [
        ("C1:NEW", "Презентация", "P", 10),
        ("C1:PREPARATION", "Общее КП", "P", 30),
        ("C1:EXECUTING", "Обратная связь", "P", 60),
        ("C1:FINAL_INVOICE", "Договор и счёт", "P", 90),
        ("C1:WON", "Оплачено", "S", 100),
        ("C1:LOSE", "Отказ", "F", 0),
    ]),
    2: _stages(2, [
        ("C2:NEW", "Индивидуальное КП", "P", 50),
        ("C2:FINAL_INVOICE", "Договор и счёт", "P", 90),
        ("C2:WON", "Оплачено", "S", 100),
        ("C2:LOSE", "Отказ", "F", 0),
    ]),
    3: _stages(3, [
        ("C3:NEW", "Новая заявка", "P", 20),
        ("C3:EXECUTING", "Счёт выставлен", "P", 80),
        ("C3:WON", "Оплачено", "S", 100),
        ("C3:LOSE", "Отказ", "F", 0),
    ]),
}

STAGE_BY_ID: dict[str, Stage] = {s.status_id: s for stages in STAGES.values() for s in stages}


def process_stages(category: int) -> list[Stage]:
    return [s for s in STAGES[category] if s.semantics == "P"]


def won_stage(category: int) -> Stage:
    return next(s for s in STAGES[category] if s.semantics == "S")


def lose_stage(category: int) -> Stage:
    return next(s for s in STAGES[category] if s.semantics == "F")


def status_entity_id(category: int) -> str:
    """crm.status ENTITY_ID of a pipeline's stages: DEAL_STAGE for 0, DEAL_STAGE_{n} otherwise."""
    return "DEAL_STAGE" if category == 0 else f"DEAL_STAGE_{category}"


# --- deal user fields (crm.deal.userfield.list) -------------------------------------------------

@dataclass(frozen=True)
class UserField:
    id: int
    name: str
    type: str  # USER_TYPE_ID
    label: str
    options: tuple[tuple[int, str], ...] = ()


def _uf(n: int, type_: str, label: str, options: tuple[tuple[int, str], ...] = ()) -> UserField:
    return UserField(200 + n, f"UF_CRM_1700000{n:03d}", type_, label, options)


USER_FIELDS: tuple[UserField, ...] = (
    _uf(101, "enumeration", "Интерес клиента подтверждён", ((101, "Да"), (102, "Нет"))),
    _uf(102, "double", "Бюджет на 6 месяцев"),
    _uf(103, "string", "Потребности и ключевые процессы"),
    _uf(104, "string", "ЛПР"),
    _uf(105, "date", "Дата первой встречи"),
    _uf(106, "date", "Дата презентации"),
    _uf(107, "url", "Техническое задание (ссылка)"),
    _uf(108, "date", "Дата отправки КП"),
    _uf(109, "double", "Сумма КП"),
    _uf(110, "string", "Номер договора"),
    _uf(111, "double", "Сумма договора"),
    _uf(112, "date", "Дата подписания"),
    _uf(113, "enumeration", "Условия оплаты", ((111, "100% предоплата"), (112, "50/50"), (113, "Отсрочка 30 дней"))),
    _uf(114, "enumeration", "Причина отказа", ((121, "Дорого"), (122, "Выбрали конкурента"), (123, "Нет интереса сейчас"), (124, "Нет бюджета"))),
    _uf(115, "date", "Дата следующего контакта"),
    _uf(116, "enumeration", "Сегмент клиента", ((131, "Горячий"), (132, "Тёплый"), (133, "Спящий"))),
    _uf(117, "date", "Дата оплаты"),
    _uf(118, "date", "Срок оплаты (дебиторка)"),
    _uf(119, "datetime", "Первый контакт с лидом"),
    # 131, 132: not 120, 121 (the amoCRM sandbox numbers its lead fields 500000 + the last three digits,
    # and keeps the probability in 500120)
    _uf(131, "double", "Маржа"),
    _uf(132, "double", "Оценка клиента (NPS)"),
)

UF_BY_NAME: dict[str, UserField] = {f.name: f for f in USER_FIELDS}


def uf(n: int) -> str:
    """The FIELD_NAME of user field number n (101..119, 131, 132)."""
    return f"UF_CRM_1700000{n:03d}"


UF_INTEREST, UF_BUDGET, UF_NEEDS, UF_LPR = uf(101), uf(102), uf(103), uf(104)
UF_FIRST_MEETING, UF_PRESENTATION, UF_TZ_URL, UF_KP_DATE, UF_KP_SUM = uf(105), uf(106), uf(107), uf(108), uf(109)
UF_CONTRACT_NO, UF_CONTRACT_SUM, UF_SIGN_DATE, UF_PAY_TERMS = uf(110), uf(111), uf(112), uf(113)
UF_LOSS_REASON, UF_NEXT_CONTACT, UF_SEGMENT, UF_PAID_DATE, UF_PAY_DUE, UF_FIRST_CONTACT = (
    uf(114), uf(115), uf(116), uf(117), uf(118), uf(119))
UF_MARGIN, UF_NPS = uf(131), uf(132)  # the KPIs' profit and satisfaction (seeded on won deals)

# --- currencies (crm.currency.list): RUB is the base; some project deals are priced in USD or EUR -----

#: CURRENCY -> (AMOUNT_CNT, AMOUNT: what AMOUNT_CNT units cost in the base currency, FULL_NAME, SORT)
CURRENCIES: dict[str, tuple[int, str, str, int]] = {
    "RUB": (1, "1.0000", "Российский рубль", 100),
    "USD": (1, "90.5000", "Доллар США", 200),
    "EUR": (1, "98.2000", "Евро", 300),
    "KZT": (100, "18.1000", "Казахстанский тенге", 400),
}
BASE_CURRENCY = "RUB"

# --- the smart process that holds sales plans (crm.item.list entityTypeId) --------------------------

#: a user-defined type: entityTypeId 1038 (hex 40E), its own id 5, so its fields are UF_CRM_5_* (ufCrm5_* in crm.item)
PLANS_ENTITY_TYPE_ID = 1038
PLANS_TYPE_ID = 5
PLANS_TITLE = "Планы продаж"
PLAN_FIELD_PERIOD = "ufCrm5_1700000301"  # string: 2026-11, 2026-Q4 ...
PLAN_FIELD_METRIC = "ufCrm5_1700000302"  # enumeration: 301 revenue, 302 won_deals, 303 new_clients
PLAN_FIELD_TARGET = "ufCrm5_1700000303"  # double
PLAN_METRIC_OPTIONS: dict[int, str] = {301: "Выручка", 302: "Выигранные сделки", 303: "Новые клиенты"}

LOSS_NO_INTEREST_NOW = "123"  # "Нет интереса сейчас": requires a next-contact date
PAY_DEFERRED = "113"

#: What a clean deal has filled once it has entered a stage, following mappings/regulation.yaml
#: (pipeline 0 "requires_to_leave" the previous stage, pipelines 1-3 "requires_to_enter").
#: The planted violations (`PortalState.planted`) break exactly these rules.
REQUIRED_BY_STAGE: dict[str, tuple[str, ...]] = {
    "NEW": (UF_SEGMENT,),
    "PREPARATION": (UF_INTEREST, UF_BUDGET, UF_NEEDS, UF_LPR, UF_FIRST_MEETING),
    "PREPAYMENT_INVOICE": (UF_PRESENTATION,),
    "EXECUTING": (UF_TZ_URL,),
    "FINAL_INVOICE": (UF_KP_DATE, UF_KP_SUM),
    "WON": (UF_CONTRACT_NO, UF_CONTRACT_SUM, UF_SIGN_DATE, UF_PAY_TERMS, UF_PAID_DATE),
    "LOSE": (UF_LOSS_REASON,),
    "APOLOGY": (UF_LOSS_REASON,),
    "C1:NEW": (UF_SEGMENT,),
    "C1:PREPARATION": (UF_INTEREST, UF_BUDGET, UF_LPR),
    "C1:EXECUTING": (UF_KP_DATE, UF_KP_SUM),
    "C1:FINAL_INVOICE": (UF_CONTRACT_NO, UF_CONTRACT_SUM, UF_PAY_TERMS, UF_PAY_DUE),
    "C1:WON": (UF_SIGN_DATE, UF_PAID_DATE),
    "C1:LOSE": (UF_LOSS_REASON,),
    "C2:NEW": (UF_SEGMENT, UF_KP_DATE, UF_KP_SUM),
    "C2:FINAL_INVOICE": (UF_CONTRACT_NO, UF_CONTRACT_SUM, UF_PAY_TERMS, UF_PAY_DUE),
    "C2:WON": (UF_SIGN_DATE, UF_PAID_DATE),
    "C2:LOSE": (UF_LOSS_REASON,),
    "C3:NEW": (UF_SEGMENT,),
    "C3:EXECUTING": (UF_KP_SUM, UF_PAY_DUE),
    "C3:WON": (UF_PAID_DATE,),
    "C3:LOSE": (UF_LOSS_REASON,),
}

#: stages where an invoice is out and UF_CRM_1700000118 (receivable due date) is watched
INVOICE_STAGES = frozenset({"C1:FINAL_INVOICE", "C2:FINAL_INVOICE", "C3:EXECUTING"})

#: the regulation's stage tasks (R3 matches titles exactly), one per stage that has one
STAGE_TASK_TITLES: dict[str, str] = {
    "NEW": "Оценить клиента и назначить первую встречу",
    "PREPARATION": "Подготовить и провести презентацию",
    "PREPAYMENT_INVOICE": "Провести диагностику и согласовать техническое задание",
    "EXECUTING": "Подготовить и направить коммерческое предложение",
    "FINAL_INVOICE": "Подписать договор",
    "WON": "Контроль выполнения срока оказания услуги/отгрузки товара",
    "C1:NEW": "Подготовить и провести презентацию",
    "C1:PREPARATION": "Подготовить и направить коммерческое предложение",
    "C1:EXECUTING": "Получить обратную связь",
    "C1:FINAL_INVOICE": "Подготовить и направить договор",
    "C2:NEW": "Подготовить и направить индивидуальное коммерческое предложение",
    "C2:FINAL_INVOICE": "Подготовить и направить договор",
    "C3:NEW": "Связаться с клиентом и выставить счёт",
    "C3:EXECUTING": "Получить оплату",
}
FOLLOW_UP_TITLE = "Связаться с отложенным клиентом"

#: from which stage on (and for won deals) the client's cards must carry a phone and an e-mail (R6)
CONTACT_DATA_FROM: dict[int, str] = {0: "PREPARATION", 1: "C1:PREPARATION", 2: "C2:NEW", 3: "C3:EXECUTING"}

#: pipelines where the first-contact timer (R7, 1 h of working time) applies; regular clients are exempt
FIRST_CONTACT_CATEGORIES = frozenset({0, 1, 3})

#: the company's business calendar (mappings/regulation.yaml): Mon-Fri 09:00-18:00 MSK minus holidays
WORK_START_HOUR, WORK_END_HOUR = 9, 18
HOLIDAYS: frozenset[str] = frozenset({
    "2026-01-01", "2026-01-02", "2026-01-07", "2026-02-23", "2026-03-09", "2026-05-01", "2026-05-11",
    "2026-06-12", "2026-11-04",
})

SOURCES: tuple[tuple[str, str], ...] = (
    ("CALL", "Звонок"), ("EMAIL", "Электронная почта"), ("WEB", "Веб-сайт"), ("ADVERTISING", "Реклама"),
    ("PARTNER", "Существующий клиент"), ("RECOMMENDATION", "По рекомендации"), ("TRADE_SHOW", "Выставка"),
    ("WEBFORM", "CRM-форма"), ("OTHER", "Другое"),
)
DEAL_TYPES: tuple[tuple[str, str], ...] = (
    ("SALE", "Продажа"), ("COMPLEX", "Комплексная продажа"), ("GOODS", "Продажа товара"),
    ("SERVICES", "Продажа услуги"), ("SERVICE", "Сервисное обслуживание"),
)

# --- deal fields (crm.deal.fields): wire type per field -----------------------------------------

#: field -> (crm.deal.fields type, filter/sort type in the query engine, read-only, title)
DEAL_FIELDS: dict[str, tuple[str, str, bool, str]] = {
    "ID": ("integer", "int", True, "ID"),
    "TITLE": ("string", "str", False, "Название"),
    "TYPE_ID": ("crm_status", "str", False, "Тип"),
    "CATEGORY_ID": ("crm_category", "int", False, "Воронка"),
    "STAGE_ID": ("crm_status", "str", False, "Стадия сделки"),
    "STAGE_SEMANTIC_ID": ("string", "str", True, "Группа стадии"),
    "IS_NEW": ("char", "flag", True, "Новая сделка"),
    "IS_RECURRING": ("char", "flag", False, "Регулярная сделка"),
    "IS_RETURN_CUSTOMER": ("char", "flag", True, "Повторная сделка"),
    "IS_REPEATED_APPROACH": ("char", "flag", True, "Повторное обращение"),
    "PROBABILITY": ("integer", "int", False, "Вероятность"),
    "CURRENCY_ID": ("crm_currency", "str", False, "Валюта"),
    "OPPORTUNITY": ("double", "float", False, "Сумма"),
    "IS_MANUAL_OPPORTUNITY": ("char", "flag", False, "IS_MANUAL_OPPORTUNITY"),
    "TAX_VALUE": ("double", "float", False, "Ставка налога"),
    "COMPANY_ID": ("crm_company", "int", False, "Компания"),
    "CONTACT_ID": ("crm_contact", "int", False, "Контакт"),
    "QUOTE_ID": ("crm_quote", "int", True, "Предложение"),
    "BEGINDATE": ("date", "datetime", False, "Дата начала"),
    "CLOSEDATE": ("date", "datetime", False, "Предполагаемая дата закрытия"),
    "OPENED": ("char", "flag", False, "Доступна для всех"),
    "CLOSED": ("char", "flag", False, "Сделка закрыта"),
    "COMMENTS": ("string", "str", False, "Комментарий"),
    "ASSIGNED_BY_ID": ("user", "int", False, "Ответственный"),
    "CREATED_BY_ID": ("user", "int", True, "Кем создана"),
    "MODIFY_BY_ID": ("user", "int", True, "Кем изменена"),
    "MOVED_BY_ID": ("user", "int", True, "Кем перемещена"),
    "DATE_CREATE": ("datetime", "datetime", True, "Дата создания"),
    "DATE_MODIFY": ("datetime", "datetime", True, "Дата изменения"),
    "MOVED_TIME": ("datetime", "datetime", True, "Дата перемещения"),
    "SOURCE_ID": ("crm_status", "str", False, "Источник"),
    "SOURCE_DESCRIPTION": ("string", "str", False, "Дополнительно об источнике"),
    "LEAD_ID": ("crm_lead", "int", True, "Лид"),
    "ADDITIONAL_INFO": ("string", "str", False, "Дополнительная информация"),
    "LOCATION_ID": ("location", "str", False, "Местоположение"),
    "ORIGINATOR_ID": ("string", "str", False, "Внешний источник"),
    "ORIGIN_ID": ("string", "str", False, "Идентификатор элемента во внешнем источнике"),
    "UTM_SOURCE": ("string", "str", False, "Рекламная система"),
    "UTM_MEDIUM": ("string", "str", False, "Тип трафика"),
    "UTM_CAMPAIGN": ("string", "str", False, "Обозначение рекламной кампании"),
    "UTM_CONTENT": ("string", "str", False, "Содержание кампании"),
    "UTM_TERM": ("string", "str", False, "Условие поиска кампании"),
    "LAST_ACTIVITY_TIME": ("datetime", "datetime", True, "Последняя активность"),
    "LAST_ACTIVITY_BY": ("user", "int", True, "Автор последней активности"),
}

DEAL_STANDARD_KEYS: tuple[str, ...] = tuple(DEAL_FIELDS)
STATUS_TYPES = {"TYPE_ID": "DEAL_TYPE", "STAGE_ID": "DEAL_STAGE", "SOURCE_ID": "SOURCE"}


def deal_field_types() -> dict[str, str]:
    """Query-engine types of every deal field incl. user fields (date UFs compare as dates)."""
    types = {k: v[1] for k, v in DEAL_FIELDS.items()}
    engine = {"double": "float", "date": "date", "datetime": "datetime", "enumeration": "str", "string": "str", "url": "str"}
    for f in USER_FIELDS:
        types[f.name] = engine[f.type]
    return types


def crm_deal_fields() -> dict[str, Any]:
    """The crm.deal.fields answer (D crm/deals/crm-deal-fields.md)."""
    result: dict[str, Any] = {}
    for key, (ftype, _, read_only, title) in DEAL_FIELDS.items():
        desc: dict[str, Any] = {
            "type": ftype,
            "isRequired": False,
            "isReadOnly": read_only,
            "isImmutable": key == "CATEGORY_ID",
            "isMultiple": False,
            "isDynamic": False,
            "title": title,
        }
        if key in STATUS_TYPES:
            desc["statusType"] = STATUS_TYPES[key]
        result[key] = desc
    result["CONTACT_IDS"] = {"type": "crm_contact", "isRequired": False, "isReadOnly": False, "isImmutable": False,
                             "isMultiple": True, "isDynamic": False, "title": "Контакты"}
    for f in USER_FIELDS:
        desc = {
            "type": f.type,
            "isRequired": False,
            "isReadOnly": False,
            "isImmutable": False,
            "isMultiple": False,
            "isDynamic": True,
            "title": f.name,
            "listLabel": f.label,
            "formLabel": f.label,
            "filterLabel": f.label,
            "settings": {},
        }
        if f.options:
            desc["items"] = [{"ID": str(oid), "VALUE": value} for oid, value in f.options]
        result[f.name] = desc
    return result
