"""REST methods of the sandbox portal: one handler per Bitrix24 method, answering in each method's own shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import catalog as c
from .query import Table, parse_start, run_query
from .state import ACTIVITY_TYPES, TASK_KEYS, PortalState
from .wire import fmt_dt, norm_dt, truthy


class ApiError(Exception):
    """An error answer: HTTP status, the `error` code (may be empty for legacy CRM) and its description."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


def crm_error(description: str) -> ApiError:
    """Legacy CRM methods answer 400 with an empty `error` (D crm/deals/crm-deal-get.md)."""
    return ApiError(400, "", description)


def core_error(description: str) -> ApiError:
    """Tasks answer 400 ERROR_CORE with a `<br>`-terminated text (D tasks/tasks-task-update.md)."""
    return ApiError(400, "ERROR_CORE", description + "<br>")


@dataclass
class MethodResult:
    result: Any
    total: int | None = None
    next: int | None = None
    is_list: bool = False
    rows: int = 0  # rows returned (simulated cost)
    counted: int = 0  # rows the COUNT visited (simulated cost)


@dataclass
class Context:
    state: PortalState
    user_id: int
    scopes: tuple[str, ...]
    status_table: Table
    user_table: Table
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Context, dict[str, Any]], MethodResult]


@dataclass(frozen=True)
class Method:
    scope: str | None
    handler: Handler
    writes: bool = False


def _get(params: dict[str, Any], *names: str, default: Any = None) -> Any:
    """First present parameter among `names`; legacy CRM upper-cases parameter names, so both spellings work."""
    for name in names:
        if name in params:
            return params[name]
    return default


def _ci(params: dict[str, Any], name: str, default: Any = None) -> Any:
    lowered = {str(k).lower(): v for k, v in params.items()}
    return lowered.get(name.lower(), default)


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, dict):
        return value
    raise crm_error(f"Parameter '{what}' must be array.")


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [str(v) for v in value.values()]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _positive_id(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise crm_error("ID is not defined or invalid") from None
    if number <= 0:
        raise crm_error("ID is not defined or invalid")
    return number


# --- projection (select) ----------------------------------------------------------------------

_UF_NAMES = tuple(f.name for f in c.USER_FIELDS)


def _crm_keys(select: list[str], standard: tuple[str, ...], ufs: tuple[str, ...], explicit_only: tuple[str, ...],
              all_keys: set[str]) -> list[str]:
    """Keys a legacy CRM list returns for `select`: `*` = standard fields, `UF_*` = user fields,
    multifields (PHONE/EMAIL) only when named; ID always comes back."""
    if not select:
        keys = list(standard)
    else:
        keys = []
        for name in select:
            if name == "*":
                keys.extend(standard)
            elif name == "UF_*":
                keys.extend(ufs)
            elif name in all_keys or name in explicit_only:
                keys.append(name)
    if "ID" not in keys:
        keys.insert(0, "ID")
    seen: set[str] = set()
    return [k for k in keys if not (k in seen or seen.add(k))]


def _project(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    return [{k: row.get(k) for k in keys} for row in rows]


# --- deals ------------------------------------------------------------------------------------

_DEAL_ALL = set(c.DEAL_STANDARD_KEYS) | set(_UF_NAMES)


def _list_result(qr: Any, rows: list[dict[str, Any]]) -> MethodResult:
    return MethodResult(rows, qr.total, qr.next, True, len(rows), qr.counted)


def deal_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    filt = _as_dict(_ci(params, "filter"), "filter")
    order = _as_dict(_ci(params, "order"), "order")
    select = _as_list(_ci(params, "select"))
    start = parse_start(_ci(params, "start", 0))
    with ctx.state.lock:
        ctx.state.note_deal_list()
        qr = run_query(ctx.state.deals, filt, order, start)
        keys = _crm_keys(select, c.DEAL_STANDARD_KEYS, _UF_NAMES, (), _DEAL_ALL)
        return _list_result(qr, _project(qr.rows, keys))


def deal_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    deal_id = _positive_id(_ci(params, "id"))
    with ctx.state.lock:
        row = ctx.state.deals.rows.get(deal_id)
        if row is None:
            raise crm_error("Not found")
        return MethodResult(dict(row))


def deal_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    fields = _as_dict(_ci(params, "fields"), "fields")
    return MethodResult(ctx.state.add_deal(fields, user_id=ctx.user_id))


def deal_update(ctx: Context, params: dict[str, Any]) -> MethodResult:
    deal_id = _positive_id(_ci(params, "id"))
    fields = _as_dict(_ci(params, "fields"), "fields")
    try:
        # CATEGORY_ID is immutable in crm.deal.update (D crm-deal-update.md): crm.item.update moves pipelines
        ctx.state.update_deal(deal_id, fields, user_id=ctx.user_id, allow_category_change=False)
    except KeyError:
        raise crm_error("Not found") from None
    return MethodResult(True)


def deal_delete(ctx: Context, params: dict[str, Any]) -> MethodResult:
    deal_id = _positive_id(_ci(params, "id"))
    try:
        ctx.state.delete_deal(deal_id)
    except KeyError:
        raise crm_error("Not found") from None
    return MethodResult(True)


def deal_fields(ctx: Context, params: dict[str, Any]) -> MethodResult:
    return MethodResult(c.crm_deal_fields())


def deal_userfield_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    filt = _as_dict(_ci(params, "filter"), "filter")
    filt = {k: v for k, v in filt.items() if str(k).upper() != "LANG"}
    rows: list[dict[str, Any]] = []
    for f in c.USER_FIELDS:
        row: dict[str, Any] = {
            "ID": str(f.id), "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": f.name, "USER_TYPE_ID": f.type,
            "XML_ID": None, "SORT": "100", "MULTIPLE": "N", "MANDATORY": "N", "SHOW_FILTER": "E",
            "SHOW_IN_LIST": "Y", "EDIT_IN_LIST": "Y", "IS_SEARCHABLE": "N", "SETTINGS": {},
            "EDIT_FORM_LABEL": f.label, "LIST_COLUMN_LABEL": f.label, "LIST_FILTER_LABEL": f.label,
            "ERROR_MESSAGE": None, "HELP_MESSAGE": None,
        }
        if f.options:
            row["LIST"] = [{"ID": str(oid), "SORT": str((i + 1) * 10), "VALUE": value, "DEF": "N",
                            "XML_ID": f"opt{oid}"} for i, (oid, value) in enumerate(f.options)]
        rows.append(row)
    table = Table("userfield", types={"ID": "int", "SORT": "int"})
    for row in rows:
        table.insert(int(row["ID"]), row)
    qr = run_query(table, filt, _as_dict(_ci(params, "order"), "order"), parse_start(_ci(params, "start", 0)))
    return _list_result(qr, [dict(r) for r in qr.rows])


# --- pipelines, stages ------------------------------------------------------------------------

def category_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    entity_type = _get(params, "entityTypeId", "ENTITY_TYPE_ID", "entityTypeID")
    if str(entity_type) != "2":  # only deal pipelines exist on this portal
        raise ApiError(400, "NOT_FOUND", "Smart process not found")
    cats = [{"id": cid, "name": name, "sort": sort, "entityTypeId": 2, "isDefault": "Y" if cid == 0 else "N",
             "originId": "", "originatorId": ""} for cid, (name, sort) in sorted(c.CATEGORIES.items(), key=lambda x: x[1][1])]
    return MethodResult({"categories": cats}, total=len(cats), is_list=True, rows=len(cats), counted=len(cats))


def build_status_table() -> Table:
    """crm.status rows for the deal stages of every pipeline, plus SOURCE and DEAL_TYPE."""
    table = Table("status", types={"ID": "int", "SORT": "int"})
    next_id = 1
    semantics_name = {"P": "process", "S": "success", "F": "failure"}
    for category, stages in c.STAGES.items():
        for stage in stages:
            table.insert(next_id, {
                "ID": str(next_id), "ENTITY_ID": c.status_entity_id(category), "STATUS_ID": stage.status_id,
                "NAME": stage.name, "NAME_INIT": stage.name if stage.status_id.split(":")[-1] in ("NEW", "WON", "LOSE") else "",
                "SORT": str(stage.sort), "SYSTEM": "Y" if stage.status_id.split(":")[-1] in ("NEW", "WON", "LOSE") else "N",
                "CATEGORY_ID": None if category == 0 else str(category), "COLOR": stage.color,
                "SEMANTICS": None if stage.semantics == "P" else stage.semantics,
                "EXTRA": {"SEMANTICS": semantics_name[stage.semantics], "COLOR": stage.color},
            })
            next_id += 1
    for entity, values in (("SOURCE", c.SOURCES), ("DEAL_TYPE", c.DEAL_TYPES)):
        for i, (status_id, name) in enumerate(values):
            table.insert(next_id, {
                "ID": str(next_id), "ENTITY_ID": entity, "STATUS_ID": status_id, "NAME": name, "NAME_INIT": name,
                "SORT": str((i + 1) * 10), "SYSTEM": "Y", "CATEGORY_ID": None, "COLOR": None, "SEMANTICS": None,
            })
            next_id += 1
    return table


def status_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    filt = _as_dict(_ci(params, "filter"), "filter")
    order = _as_dict(_ci(params, "order"), "order") or {"SORT": "ASC"}
    qr = run_query(ctx.status_table, filt, order, parse_start(_ci(params, "start", 0)))
    return _list_result(qr, [dict(r) for r in qr.rows])


# --- contacts, companies ----------------------------------------------------------------------

_CONTACT_STANDARD = tuple(k for k in ("ID", "NAME", "SECOND_NAME", "LAST_NAME", "POST", "TYPE_ID", "SOURCE_ID",
                                      "COMPANY_ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID",
                                      "DATE_CREATE", "DATE_MODIFY", "OPENED", "EXPORT", "HAS_PHONE", "HAS_EMAIL",
                                      "HAS_IMOL", "COMMENTS", "LAST_ACTIVITY_TIME"))
_COMPANY_STANDARD = ("ID", "TITLE", "COMPANY_TYPE", "INDUSTRY", "EMPLOYEES", "REVENUE", "CURRENCY_ID",
                     "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID", "DATE_CREATE", "DATE_MODIFY", "OPENED",
                     "HAS_PHONE", "HAS_EMAIL", "HAS_IMOL", "COMMENTS", "LAST_ACTIVITY_TIME")
_MULTI = ("PHONE", "EMAIL")


def _entity_list(table_of: Callable[[PortalState], Table], standard: tuple[str, ...]) -> Handler:
    def handler(ctx: Context, params: dict[str, Any]) -> MethodResult:
        filt = _as_dict(_ci(params, "filter"), "filter")
        order = _as_dict(_ci(params, "order"), "order")
        select = _as_list(_ci(params, "select"))
        start = parse_start(_ci(params, "start", 0))
        with ctx.state.lock:
            qr = run_query(table_of(ctx.state), filt, order, start)
            # multifields only when named in select (D crm/contacts/crm-contact-list.md)
            keys = _crm_keys(select, standard, (), _MULTI, set(standard))
            return _list_result(qr, _project(qr.rows, keys))
    return handler


def _entity_get(table_of: Callable[[PortalState], Table]) -> Handler:
    def handler(ctx: Context, params: dict[str, Any]) -> MethodResult:
        entity_id = _positive_id(_ci(params, "id"))
        with ctx.state.lock:
            row = table_of(ctx.state).rows.get(entity_id)
            if row is None:
                raise crm_error("Not found")
            out = dict(row)
        for key in _MULTI:  # get returns multifields, but only when there are values
            if not out.get(key):
                out.pop(key, None)
        return MethodResult(out)
    return handler


# --- stage history ----------------------------------------------------------------------------

def stagehistory_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    entity_type = str(_get(params, "entityTypeId", "ENTITY_TYPE_ID", default=""))
    if entity_type not in ("1", "2", "5", "31"):
        raise ApiError(400, "ENTITY_TYPE_NOT_SUPPORTED", f"Entity type `{entity_type}` is not supported")
    filt = _as_dict(_get(params, "filter", "FILTER"), "filter")
    order = _as_dict(_get(params, "order", "ORDER"), "order")
    select = _as_list(_get(params, "select", "SELECT"))
    start = parse_start(_get(params, "start", "START", default=0))
    with ctx.state.lock:
        if entity_type != "2":
            return MethodResult({"items": []}, 0, None, True, 0, 0)
        qr = run_query(ctx.state.history, filt, order, start)
        keys = [k for k in select if k in ctx.state.history.types] or list(ctx.state.history.types)
        rows = [{k: row.get(k) for k in keys} for row in qr.rows]
    return MethodResult({"items": rows}, qr.total, qr.next, True, len(rows), qr.counted)


# --- users and departments --------------------------------------------------------------------

def build_user_table() -> Table:
    table = Table("user", types={"ID": "int", "ACTIVE": "bool", "UF_DEPARTMENT": "list", "DATE_REGISTER": "datetime"})
    for u in c.USERS:
        table.insert(u.id, {
            "ID": str(u.id), "XML_ID": str(u.id), "ACTIVE": u.active, "NAME": u.name, "LAST_NAME": u.last_name,
            "SECOND_NAME": "", "EMAIL": u.email, "LAST_LOGIN": "2025-01-01T09:00:00+03:00",
            "DATE_REGISTER": "2023-09-01T00:00:00+03:00", "TIME_ZONE": "", "IS_ONLINE": "N",
            "TIMESTAMP_X": {}, "LAST_ACTIVITY_DATE": {}, "PERSONAL_GENDER": "", "PERSONAL_BIRTHDAY": "",
            "PERSONAL_MOBILE": "", "WORK_PHONE": "", "WORK_POSITION": u.position, "UF_EMPLOYMENT_DATE": "",
            "UF_DEPARTMENT": [u.department], "USER_TYPE": "employee",
        })
    return table


_USER_RESERVED = {"sort", "order", "filter", "start", "admin_mode", "select", "auth", "name_search"}


def user_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    # filter keys may be top-level or under FILTER (D user/user-get.md)
    filt: dict[str, Any] = {}
    for key, value in params.items():
        if str(key).lower() not in _USER_RESERVED:
            filt[str(key)] = value
    nested = _ci(params, "filter")
    if isinstance(nested, dict):
        filt.update(nested)
    sort = _ci(params, "sort")
    direction = _ci(params, "order", "ASC")
    order = {str(sort): str(direction)} if sort else None
    qr = run_query(ctx.user_table, filt, order, parse_start(_ci(params, "start", 0)))
    return _list_result(qr, [dict(r) for r in qr.rows])


def department_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    table = Table("department", types={"ID": "int", "PARENT": "int", "UF_HEAD": "int", "SORT": "int"})
    for did, (name, parent, head) in c.DEPARTMENTS.items():
        # D departments/department-get.md: ID and PARENT as strings, SORT as a number
        row: dict[str, Any] = {"ID": str(did), "NAME": name, "SORT": did * 100, "UF_HEAD": str(head) if head else ""}
        if parent is not None:
            row["PARENT"] = str(parent)
        table.insert(did, row)
    filt = {k: v for k, v in params.items() if str(k).lower() not in _USER_RESERVED}
    order = {str(_ci(params, "sort")): str(_ci(params, "order", "ASC"))} if _ci(params, "sort") else None
    qr = run_query(table, filt, order, parse_start(_ci(params, "start", 0)))
    return _list_result(qr, [dict(r) for r in qr.rows])


# --- tasks ------------------------------------------------------------------------------------

_TASK_DEFAULT = ("ID", "PARENT_ID", "TITLE", "DESCRIPTION", "STATUS", "PRIORITY", "RESPONSIBLE_ID", "CREATED_BY",
                 "CREATED_DATE", "CHANGED_BY", "CHANGED_DATE", "STATUS_CHANGED_DATE", "CLOSED_BY", "CLOSED_DATE",
                 "DEADLINE", "GROUP_ID")


def _task_view(row: dict[str, Any], select: list[str], now_wire: str) -> dict[str, Any]:
    """A task as tasks.task.* return it: camelCase strings; `ufCrmTask` only when UF_CRM_TASK is selected."""
    names = [s.upper() for s in select] if select else list(_TASK_DEFAULT)
    if "*" in names:
        names = list(_TASK_DEFAULT) + [n for n in names if n != "*"]
    if "ID" not in names:
        names.insert(0, "ID")
    out: dict[str, Any] = {}
    for name in names:
        camel = TASK_KEYS.get(name)
        if camel is None:
            continue
        out[camel] = row.get(camel)
        if camel == "status":
            sub = row.get("status")
            deadline = row.get("deadline")
            if sub in ("2", "3") and deadline and deadline < now_wire:
                sub = "-1"  # the "overdue" meta-status of subStatus
            out["subStatus"] = sub
    return out


def task_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    filt = _as_dict(_ci(params, "filter"), "filter")
    order = _as_dict(_ci(params, "order"), "order")
    select = _as_list(_ci(params, "select"))
    start = parse_start(_ci(params, "start", 0))
    with ctx.state.lock:
        now_wire = ctx.state.now_wire()
        binding = filt.get("UF_CRM_TASK")
        if isinstance(binding, str) and "@ID" not in filt:
            # a portal finds a deal's tasks by an index, not by reading every task (the filter still applies)
            filt = {**filt, "@ID": ctx.state.tasks_bound_to(binding)}
        if not is_admin(ctx.user_id):
            # the list answers with the current user's rights: a manager sees the tasks they take part in
            visible = ctx.state.tasks_visible_to(ctx.user_id)
            wanted = filt.get("@ID")
            if wanted is not None:
                asked = {str(item) for item in (wanted if isinstance(wanted, (list, tuple)) else [wanted])}
                visible = [task_id for task_id in visible if str(task_id) in asked]
            filt = {**filt, "@ID": visible}
        qr = run_query(ctx.state.tasks, filt, order, start)
        rows = [_task_view(r, select, now_wire) for r in qr.rows]
    return MethodResult({"tasks": rows}, qr.total, qr.next, True, len(rows), qr.counted)


def _task_id(params: dict[str, Any]) -> int:
    value = _ci(params, "taskId", _ci(params, "id"))
    if value is None:
        raise ApiError(400, "100", "CTaskItem All parameters in the constructor must have real class type (internal error)")
    try:
        return int(str(value))
    except ValueError:
        raise ApiError(400, "0", "wrong task id") from None


def _validate_task_fields(fields: dict[str, Any], *, creating: bool) -> None:
    upper = {str(k).upper(): v for k, v in fields.items()}
    if creating and not str(upper.get("TITLE") or "").strip():
        raise core_error("Task title is not specified")
    if creating and not upper.get("RESPONSIBLE_ID"):
        raise core_error("Responsible person not specified")
    if "RESPONSIBLE_ID" in upper:
        try:
            rid = int(str(upper["RESPONSIBLE_ID"]))
        except ValueError:
            rid = -1
        if rid not in {u.id for u in c.USERS}:
            raise core_error('The user specified in the "Assignee" field is not found')
    if "STATUS" in upper and str(upper["STATUS"]) not in {"1", "2", "3", "4", "5", "6", "7"}:
        raise core_error("Invalid status")


def task_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    fields = _ci(params, "fields")
    if not isinstance(fields, dict) or not fields:
        raise ApiError(400, "100", "Could not find value for parameter {fields} (internal error)")
    _validate_task_fields(fields, creating=True)
    task_id = ctx.state.add_task(fields, user_id=ctx.user_id)
    with ctx.state.lock:
        row = ctx.state.tasks.rows[task_id]
        return MethodResult({"task": _task_view(row, [], ctx.state.now_wire())})


def task_update(ctx: Context, params: dict[str, Any]) -> MethodResult:
    task_id = _task_id(params)
    fields = _ci(params, "fields")
    if not isinstance(fields, dict) or not fields:
        raise ApiError(400, "100", "Could not find value for parameter {fields} (internal error)")
    _validate_task_fields(fields, creating=False)
    try:
        ctx.state.update_task(task_id, fields, user_id=ctx.user_id)
    except KeyError:
        raise core_error("Task not found or not accessible") from None
    with ctx.state.lock:
        return MethodResult({"task": _task_view(ctx.state.tasks.rows[task_id], [], ctx.state.now_wire())})


def task_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    task_id = _task_id(params)
    select = _as_list(_ci(params, "select"))
    with ctx.state.lock:
        row = ctx.state.tasks.rows.get(task_id)
        if row is None:
            return MethodResult([])  # "an empty array if the task does not exist" (D tasks/tasks-task-get.md)
        return MethodResult({"task": _task_view(row, select, ctx.state.now_wire())})


# --- activities, timeline, notifications --------------------------------------------------------

def activity_todo_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D crm/timeline/activities/todo/crm-activity-todo-add.md: camelCase parameters, answers {"id": N}."""
    for name in ("ownerTypeId", "ownerId", "deadline"):
        if _get(params, name) in (None, ""):
            raise ApiError(400, "100", f"Could not find value for parameter {{{name}}}")
    try:
        owner_type = int(str(params["ownerTypeId"]))
        owner_id = int(str(params["ownerId"]))
    except ValueError:
        raise ApiError(400, "OWNER_NOT_FOUND", "Owner of the entity not found") from None
    deadline = norm_dt(params["deadline"])
    if deadline is None:
        raise ApiError(400, "WRONG_DATETIME_FORMAT", f"Wrong datetime format: {params['deadline']}")
    try:
        responsible = int(str(_get(params, "responsibleId", default=ctx.user_id)))
    except ValueError:
        responsible = ctx.user_id  # the webhook's user, as when responsibleId is not given
    with ctx.state.lock:
        if owner_type != 2 or owner_id not in ctx.state.deals.rows:
            raise ApiError(400, "NOT_FOUND", "Not found.")  # only deals can own an activity on this portal
        aid = ctx.state.add_todo(owner_type, owner_id, deadline, title=str(_get(params, "title", default="") or ""),
                                 description=str(_get(params, "description", default="") or ""),
                                 responsible_id=responsible, author_id=ctx.user_id)
    return MethodResult({"id": aid})


#: crm.activity.list answers these without a select or with `*` (this portal keeps no COMMUNICATIONS or FILES)
_ACTIVITY_STANDARD = tuple(ACTIVITY_TYPES)


def activity_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D crm/timeline/activities/activity-base/crm-activity-list.md: UPPER_CASE rows, default order START_TIME ASC."""
    filt = _as_dict(_ci(params, "filter"), "filter")
    order = _as_dict(_ci(params, "order"), "order") or {"START_TIME": "ASC"}
    select = _as_list(_ci(params, "select"))
    start = parse_start(_ci(params, "start", 0))
    with ctx.state.lock:
        qr = run_query(ctx.state.activities, filt, order, start)
        keys = _crm_keys(select, _ACTIVITY_STANDARD, (), (), set(_ACTIVITY_STANDARD))
        return _list_result(qr, _project(qr.rows, keys))


def timeline_comment_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    fields = params.get("fields")  # only lowercase `fields` since crm 23.100.0
    if not isinstance(fields, dict):
        raise ApiError(400, "", "Parameter 'fields' must be array.")
    entity_type = str(fields.get("ENTITY_TYPE") or "").lower()
    try:
        entity_id = int(str(fields.get("ENTITY_ID")))
    except ValueError:
        raise ApiError(400, "", "ENTITY_ID is not defined or invalid.") from None
    comment = str(fields.get("COMMENT") or "")
    if not comment:
        raise ApiError(400, "", "Empty comment message.")
    with ctx.state.lock:
        if entity_type == "deal" and entity_id not in ctx.state.deals.rows:
            raise ApiError(400, "", "Not found")
        cid = ctx.state.add_comment(entity_type, entity_id, comment, int(str(fields.get("AUTHOR_ID") or ctx.user_id)))
    return MethodResult(cid)


def timeline_comment_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    filt = _as_dict(_ci(params, "filter"), "filter")
    order = _as_dict(_ci(params, "order"), "order")
    select = _as_list(_ci(params, "select"))
    with ctx.state.lock:
        qr = run_query(ctx.state.comments, filt, order, parse_start(_ci(params, "start", 0)))
        keys = [k for k in select if k != "*"] or ["ID", "CREATED", "ENTITY_ID", "ENTITY_TYPE", "AUTHOR_ID", "COMMENT", "FILES"]
        if "ID" not in keys:
            keys.insert(0, "ID")
        return _list_result(qr, _project(qr.rows, keys))


def notify_system_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D chats/notifications/im-notify-system-add.md: answers the notification's id, or `false` when not created."""
    user_id = _ci(params, "USER_ID")
    message = str(_ci(params, "MESSAGE") or "").strip()  # "trims whitespace from the ends"
    if not user_id or not str(user_id).isdigit() or int(str(user_id)) <= 0:
        raise ApiError(400, "USER_ID_EMPTY", "User ID can't be empty")
    if not message:
        raise ApiError(400, "MESSAGE_EMPTY", "Message can't be empty")
    if ctx.extra.get("not_created"):
        return MethodResult(False)
    extra = {k.upper(): v for k, v in params.items() if k.upper() not in ("USER_ID", "MESSAGE")}
    auth = ctx.extra.get("auth")
    if getattr(auth, "kind", "") == "app" and getattr(auth, "client_id", None):
        extra.setdefault("CLIENT_ID", auth.client_id)  # called with an application's token: the application is known
    return MethodResult(ctx.state.add_notification(int(str(user_id)), message, extra))


def _dialog_user(params: dict[str, Any]) -> int:
    """DIALOG_ID of a private dialog: the other user's id (group chats `chatN` do not exist on this portal)."""
    dialog = str(_ci(params, "DIALOG_ID") or "").strip()
    if dialog.startswith(("chat", "sg")):
        raise ApiError(400, "CHAT_ID", "Error creating message")
    if not dialog.isdigit() or int(dialog) <= 0:
        raise ApiError(400, "USER_ID_EMPTY", "User ID can't be empty")
    if int(dialog) not in {u.id for u in c.USERS}:
        raise ApiError(400, "USER_NOT_FOUND", "User not found")
    return int(dialog)


def message_add(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D chats/messages/im-message-add.md: a message from the webhook's user; answers the message id."""
    dialog_user = _dialog_user(params)
    text = str(_ci(params, "MESSAGE") or "")
    if not text.strip() and not _ci(params, "ATTACH"):
        raise ApiError(400, "MESSAGE_EMPTY", "Message can't be empty")
    if ctx.extra.get("not_created"):
        return MethodResult(False)
    extra = {k.upper(): v for k, v in params.items() if k.upper() not in ("DIALOG_ID", "MESSAGE")}
    return MethodResult(ctx.state.add_message(ctx.user_id, dialog_user, text, extra))


def dialog_messages_get(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D chats/messages/im-dialog-messages-get.md: the newest messages (LIMIT ≤ 50, default 20), older than LAST_ID
    or newer than FIRST_ID; newest first."""
    dialog_user = _dialog_user(params)
    try:
        limit = min(50, max(1, int(str(_ci(params, "LIMIT", 20)))))
        last_id = int(str(_ci(params, "LAST_ID", 0) or 0))
        first_id = int(str(_ci(params, "FIRST_ID", 0) or 0))
    except ValueError:
        raise ApiError(400, "PARAMS_ERROR", "Incorrect params") from None
    chat_id, rows = ctx.state.dialog_messages(ctx.user_id, dialog_user)
    if last_id:
        rows = [row for row in rows if row["id"] < last_id]
    if first_id:
        rows = [row for row in rows if row["id"] > first_id][-limit:]
    rows = rows[:limit]
    return MethodResult({"chat_id": chat_id, "messages": rows, "users": [], "files": []})


# --- currencies, smart process items ------------------------------------------------------------

def currency_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D crm/currency/crm-currency-list.md: one page of UPPER_CASE string rows; `total` is always 0."""
    rows = []
    for code, (count, amount, name, sort) in sorted(c.CURRENCIES.items(), key=lambda item: item[1][3]):
        rows.append({"CURRENCY": code, "AMOUNT_CNT": str(count), "AMOUNT": amount, "SORT": str(sort),
                     "BASE": "Y" if code == c.BASE_CURRENCY else "N", "FULL_NAME": name, "LID": "ru",
                     "FORMAT_STRING": f"# {code}", "DEC_POINT": ".", "THOUSANDS_SEP": "&nbsp;", "DECIMALS": "2",
                     "DATE_UPDATE": "2026-01-12T10:00:00+03:00"})
    order = _as_dict(_ci(params, "order"), "order")
    for key, direction in reversed(list(order.items())):
        column = str(key).upper()
        rows.sort(key=lambda row: (int(row[column]) if column == "SORT" else str(row.get(column) or "")),
                  reverse=str(direction).upper() == "DESC")
    return MethodResult(rows, total=0, is_list=True, rows=len(rows), counted=len(rows))


def item_list(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """D crm/universal/crm-item-list.md: camelCase typed rows in `result.items`; this portal's only dynamic
    type is the smart process holding plans (deals are served by crm.deal.list)."""
    entity_type = str(_get(params, "entityTypeId", default=""))
    if entity_type != str(c.PLANS_ENTITY_TYPE_ID):
        raise ApiError(400, "NOT_FOUND", "Smart process not found")
    filt = _as_dict(_get(params, "filter"), "filter")
    order = _as_dict(_get(params, "order"), "order")
    select = _as_list(_get(params, "select"))
    start = parse_start(_get(params, "start", default=0))
    with ctx.state.lock:
        table = ctx.state.plan_items
        unknown = [key for key in filt if key.lstrip("><=!@%") not in table.types]
        if unknown:
            raise ApiError(400, "INVALID_ARG_VALUE", f"Invalid filter: field '{unknown[0].lstrip('><=!@%')}' is not allowed in filter")
        qr = run_query(table, filt, order, start)
        if select and "*" not in select:
            keys = ["id"] + [key for key in select if key != "id"]
            rows = [{key: row.get(key) for key in keys if key in row} for row in qr.rows]
        else:
            rows = [dict(row) for row in qr.rows]
    return MethodResult({"items": rows}, qr.total, qr.next, True, len(rows), qr.counted)


# --- introspection ----------------------------------------------------------------------------

def scope_method(ctx: Context, params: dict[str, Any]) -> MethodResult:
    if truthy(_ci(params, "full", False)):
        return MethodResult(sorted({m.scope for m in METHODS.values() if m.scope}))
    return MethodResult(list(ctx.scopes))


def is_admin(user_id: int) -> bool:
    """The sandbox's administrator is user 1 (Администратор); every other user is a manager."""
    return user_id == 1


def user_admin(ctx: Context, params: dict[str, Any]) -> MethodResult:
    """user.admin (scope basic, any user): whether the current user is a Bitrix24 administrator."""
    return MethodResult(is_admin(ctx.user_id))


def profile(ctx: Context, params: dict[str, Any]) -> MethodResult:
    user = next((u for u in c.USERS if u.id == ctx.user_id), c.USERS[0])
    return MethodResult({
        "ID": str(user.id), "ADMIN": is_admin(user.id), "NAME": user.name, "LAST_NAME": user.last_name,
        "PERSONAL_GENDER": "", "PERSONAL_PHOTO": "", "TIME_ZONE": "Europe/Moscow", "TIME_ZONE_OFFSET": 10800,
    })


def server_time(ctx: Context, params: dict[str, Any]) -> MethodResult:
    return MethodResult(fmt_dt(ctx.state.now()))


METHODS: dict[str, Method] = {
    "crm.deal.list": Method("crm", deal_list),
    "crm.deal.get": Method("crm", deal_get),
    "crm.deal.add": Method("crm", deal_add, writes=True),
    "crm.deal.update": Method("crm", deal_update, writes=True),
    "crm.deal.delete": Method("crm", deal_delete, writes=True),
    "crm.deal.fields": Method("crm", deal_fields),
    "crm.deal.userfield.list": Method("crm", deal_userfield_list),
    "crm.category.list": Method("crm", category_list),
    "crm.status.list": Method("crm", status_list),
    "crm.contact.list": Method("crm", _entity_list(lambda s: s.contacts, _CONTACT_STANDARD)),
    "crm.contact.get": Method("crm", _entity_get(lambda s: s.contacts)),
    "crm.company.list": Method("crm", _entity_list(lambda s: s.companies, _COMPANY_STANDARD)),
    "crm.company.get": Method("crm", _entity_get(lambda s: s.companies)),
    "crm.stagehistory.list": Method("crm", stagehistory_list),
    "crm.activity.todo.add": Method("crm", activity_todo_add, writes=True),
    "crm.currency.list": Method("crm", currency_list),
    "crm.item.list": Method("crm", item_list),
    "crm.activity.list": Method("crm", activity_list),
    "crm.timeline.comment.add": Method("crm", timeline_comment_add, writes=True),
    "crm.timeline.comment.list": Method("crm", timeline_comment_list),
    "user.get": Method("user", user_get),
    "department.get": Method("department", department_get),
    "tasks.task.list": Method("task", task_list),
    "tasks.task.get": Method("task", task_get),
    "tasks.task.add": Method("task", task_add, writes=True),
    "tasks.task.update": Method("task", task_update, writes=True),
    "im.notify.system.add": Method("im", notify_system_add, writes=True),
    "im.message.add": Method("im", message_add, writes=True),
    "im.dialog.messages.get": Method("im", dialog_messages_get),
    "scope": Method(None, scope_method),
    "profile": Method(None, profile),
    "user.admin": Method(None, user_admin),
    "server.time": Method(None, server_time),
}
