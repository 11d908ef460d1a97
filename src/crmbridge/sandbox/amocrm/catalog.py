"""Stable ids of the sandbox amoCRM account: users, groups, pipelines, statuses, custom fields, enums.

The account is the Bitrix24 sandbox portal told in amoCRM's terms (same people, pipelines, stages,
fields and seeded deals), so `mappings/amocrm.yaml` binds it to the same `regulation.yaml` and the
same planted regulation breaches are found. The translation is fixed here; `mappings/amocrm.yaml`
depends on these ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from crmbridge.sandbox import catalog as b24

ACCOUNT_ID = 31000001
SUBDOMAIN = "sandbox"
TIMEZONE = "Europe/Moscow"
CURRENCY = "RUB"

#: amoCRM's system statuses, the same in every pipeline (reference §3; LeadModel::WON_STATUS_ID / LOST_STATUS_ID)
WON_STATUS = 142
LOST_STATUS = 143

#: Bitrix24 user id -> amoCRM user id
USER_IDS: dict[int, int] = {user.id: 6000000 + user.id for user in b24.USERS}
#: Bitrix24 department -> amoCRM users group (0 is the account's default group, "Отдел продаж")
GROUP_IDS: dict[int, int] = {1: 0, 2: 381101, 3: 381102}
GROUP_NAMES: dict[int, str] = {GROUP_IDS[dep]: name for dep, (name, _, _) in b24.DEPARTMENTS.items()}

#: Bitrix24 CATEGORY_ID -> amoCRM pipeline id
PIPELINE_IDS: dict[int, int] = {category: 7000100 + 100 * category for category in b24.CATEGORIES}


@dataclass(frozen=True)
class Status:
    id: int
    name: str
    pipeline_id: int
    sort: int
    type: int  # 1 = unsorted (incoming), 0 = regular
    color: str
    is_editable: bool


def _status_id(category: int, index: int) -> int:
    return 60000000 + 100 * category + index


#: Bitrix24 STAGE_ID -> amoCRM status id (both lost stages of pipeline 0 become 143: amoCRM has one)
STATUS_IDS: dict[str, int] = {}
STATUSES: dict[int, list[Status]] = {}
for _category, _stages in b24.STAGES.items():
    _pipeline = PIPELINE_IDS[_category]
    STATUSES[_pipeline] = [Status(_status_id(_category, 0), "Неразобранное", _pipeline, 10, 1, "#c1c1c1", False)]
    for _index, _stage in enumerate(_stages, start=1):
        if _stage.semantics == "S":
            STATUS_IDS[_stage.status_id] = WON_STATUS
        elif _stage.semantics == "F":
            STATUS_IDS[_stage.status_id] = LOST_STATUS
        else:
            STATUS_IDS[_stage.status_id] = _status_id(_category, _index)
            STATUSES[_pipeline].append(Status(_status_id(_category, _index), _stage.name, _pipeline, 10 + 10 * _index,
                                              0, "#99ccff", True))
    STATUSES[_pipeline].append(Status(WON_STATUS, "Успешно реализовано", _pipeline, 10000, 0, "#CCFF66", False))
    STATUSES[_pipeline].append(Status(LOST_STATUS, "Закрыто и не реализовано", _pipeline, 11000, 0, "#D5D8DB", False))

STATUS_BY_ID: dict[tuple[int, int], Status] = {(s.pipeline_id, s.id): s for ss in STATUSES.values() for s in ss}

#: Bitrix24 user field type -> amoCRM custom field type
FIELD_TYPES = {"enumeration": "select", "double": "numeric", "string": "text", "date": "date", "url": "url",
               "datetime": "date_time"}


@dataclass(frozen=True)
class CustomField:
    id: int
    name: str
    type: str
    code: str | None
    sort: int
    enums: tuple[tuple[int, str], ...] = ()


def _field_id(b24_name: str) -> int:
    return 500000 + int(b24_name[-3:])


#: Bitrix24 UF_CRM_* -> amoCRM lead custom field id
FIELD_IDS: dict[str, int] = {f.name: _field_id(f.name) for f in b24.USER_FIELDS}
#: Bitrix24 enum option id -> amoCRM enum id
ENUM_IDS: dict[int, int] = {option: 900000 + option for f in b24.USER_FIELDS for option, _ in f.options}
#: amoCRM has no probability on a lead: the account keeps it in a numeric custom field, bound as `probability_field`
PROBABILITY_FIELD = 500120

LEAD_FIELDS: tuple[CustomField, ...] = tuple(
    CustomField(FIELD_IDS[f.name], f.label, FIELD_TYPES[f.type], None, 500 + index,
                tuple((ENUM_IDS[option], label) for option, label in f.options))
    for index, f in enumerate(b24.USER_FIELDS)
) + (CustomField(PROBABILITY_FIELD, "Вероятность, %", "numeric", None, 600),)
LEAD_FIELD_BY_ID: dict[int, CustomField] = {f.id: f for f in LEAD_FIELDS}

#: the system multitext fields of contacts and companies (reference §4: codes PHONE / EMAIL with enum codes)
CONTACT_PHONE, CONTACT_EMAIL, COMPANY_PHONE, COMPANY_EMAIL = 400001, 400002, 400011, 400012
PHONE_ENUMS = (("WORK", 700001), ("WORKDD", 700002), ("MOB", 700003), ("FAX", 700004), ("HOME", 700005),
               ("OTHER", 700006))
EMAIL_ENUMS = (("WORK", 700011), ("PRIV", 700012), ("OTHER", 700013))
CONTACT_FIELDS: tuple[CustomField, ...] = (
    CustomField(CONTACT_PHONE, "Телефон", "multitext", "PHONE", 4, tuple((i, c) for c, i in PHONE_ENUMS)),
    CustomField(CONTACT_EMAIL, "Email", "multitext", "EMAIL", 6, tuple((i, c) for c, i in EMAIL_ENUMS)),
)
COMPANY_FIELDS: tuple[CustomField, ...] = (
    CustomField(COMPANY_PHONE, "Телефон", "multitext", "PHONE", 4, tuple((i, c) for c, i in PHONE_ENUMS)),
    CustomField(COMPANY_EMAIL, "Email", "multitext", "EMAIL", 6, tuple((i, c) for c, i in EMAIL_ENUMS)),
)

#: the long-lived token the sandbox accepts (a private integration's token)
LONG_LIVED_TOKEN = "sandbox-long-lived-token"
#: the sandbox integration's OAuth credentials
CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
REDIRECT_URI = "https://crmbridge.example/amocrm/oauth"
