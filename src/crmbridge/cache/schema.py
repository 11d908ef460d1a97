"""The cache's tables as versioned migrations; `PRAGMA user_version` holds the version reached.

Each entry of MIGRATIONS is one SQL script; version N means scripts 1..N ran. Append, never edit
a released script: a cache written by an older crmbridge is migrated forward on open, and a cache
written by a newer one is refused (see store.open_cache).
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the read path of the foundation issue.
    """
    CREATE TABLE deals (
        id INTEGER PRIMARY KEY,          -- Bitrix24 deal ID
        title TEXT,
        category_id INTEGER,             -- pipeline (CATEGORY_ID); 0 = the default pipeline
        stage_id TEXT,                   -- STAGE_ID as the portal has it, e.g. 'C1:NEW'
        stage_semantic TEXT,             -- P in progress, S won, F lost
        amount REAL,                     -- OPPORTUNITY; NULL when empty (not the same as 0)
        currency TEXT,
        assigned_by_id INTEGER,          -- responsible manager (users.id)
        contact_id INTEGER,
        company_id INTEGER,
        date_create TEXT,                -- ISO 8601 with the portal's offset
        date_modify TEXT,
        closed INTEGER,                  -- 1 when CLOSED = Y
        close_date TEXT,
        probability REAL,
        deleted INTEGER NOT NULL DEFAULT 0,  -- 1 when a full sync no longer found it on the portal
        synced_at TEXT,                  -- when crmbridge last wrote this row (UTC)
        raw TEXT NOT NULL                -- the record exactly as the portal sent it (JSON), UF_CRM_* included
    );
    CREATE INDEX deals_date_modify ON deals(date_modify);
    CREATE INDEX deals_category_stage ON deals(category_id, stage_id);
    CREATE INDEX deals_assigned ON deals(assigned_by_id);

    CREATE TABLE pipelines (
        id INTEGER PRIMARY KEY,          -- CATEGORY_ID
        name TEXT,
        sort INTEGER,
        is_default INTEGER,
        raw TEXT NOT NULL
    );

    CREATE TABLE stages (
        status_id TEXT PRIMARY KEY,      -- STAGE_ID value, e.g. 'C1:NEW'
        category_id INTEGER,
        entity_id TEXT,                  -- DEAL_STAGE or DEAL_STAGE_<n>
        name TEXT,
        sort INTEGER,
        semantics TEXT,                  -- P (process), S (success), F (failure)
        raw TEXT NOT NULL
    );

    CREATE TABLE deal_fields (
        field_name TEXT PRIMARY KEY,     -- e.g. UF_CRM_1700000105
        user_type_id TEXT,               -- string, double, date, enumeration, ...
        label TEXT,
        multiple INTEGER,
        mandatory INTEGER,
        options TEXT,                    -- JSON [{"ID": "101", "VALUE": "Да"}, ...] for enumerations
        raw TEXT NOT NULL
    );

    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT,
        last_name TEXT,
        email TEXT,
        active INTEGER,
        departments TEXT,                -- JSON list of department ids (UF_DEPARTMENT)
        raw TEXT NOT NULL
    );

    CREATE TABLE contacts (
        id INTEGER PRIMARY KEY,
        name TEXT,
        last_name TEXT,
        company_id INTEGER,
        has_phone INTEGER,
        has_email INTEGER,
        raw TEXT NOT NULL                -- PHONE / EMAIL multifields included
    );

    CREATE TABLE companies (
        id INTEGER PRIMARY KEY,
        title TEXT,
        has_phone INTEGER,
        has_email INTEGER,
        raw TEXT NOT NULL
    );

    CREATE TABLE stage_history (
        id INTEGER PRIMARY KEY,          -- crm.stagehistory.list ID (append-only on the portal)
        deal_id INTEGER,                 -- OWNER_ID
        type_id INTEGER,                 -- 1 created, 2 moved, 3 moved to a final stage, 5 pipeline changed
        category_id INTEGER,
        stage_id TEXT,
        stage_semantic TEXT,
        created_time TEXT,
        raw TEXT NOT NULL
    );
    CREATE INDEX stage_history_deal ON stage_history(deal_id, id);

    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        deal_id INTEGER,                 -- the first deal it is bound to (UF_CRM_TASK 'D_<id>')
        title TEXT,
        status INTEGER,                  -- 2 pending, 3 in progress, 4 awaiting control, 5 completed, 6 deferred
        responsible_id INTEGER,
        deadline TEXT,
        created_date TEXT,
        changed_date TEXT,
        closed_date TEXT,
        raw TEXT NOT NULL
    );
    CREATE INDEX tasks_deal ON tasks(deal_id);

    CREATE TABLE sync_state (
        entity TEXT PRIMARY KEY,         -- deals, stage_history, tasks, ...
        mode TEXT,                       -- full or incremental: what the last run of this entity was
        status TEXT,                     -- running (interrupted if found on start) or done
        cursor TEXT,                     -- incremental cursor: portal time a finished run started at
        run_cursor TEXT,                 -- the cursor the running run will set when it finishes
        last_id INTEGER,                 -- last ID committed by a running full sync (resume point)
        started_at TEXT,
        finished_at TEXT
    );

    CREATE TABLE sync_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mode TEXT,
        started_at TEXT,
        finished_at TEXT,
        status TEXT,                     -- running, done, failed
        summary TEXT                     -- JSON: counts, requests, seconds
    );
    """,
    # <-- further migrations (violations, actions, ...) go below, one string each.
    # 2: compliance history (issue 3): one row per violation episode, opened and resolved as deals change.
    """
    CREATE TABLE violations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,               -- rule:deal:stage entry; stable across runs (Violation.key)
        deal_id INTEGER NOT NULL,        -- deals.id
        rule TEXT NOT NULL,              -- R1..R11
        direction TEXT,                  -- regulated direction, e.g. project_sales
        stage TEXT,                      -- regulated stage the violation belongs to
        entry TEXT,                      -- the stage entry (CRM stage @ time) it belongs to
        severity TEXT,                   -- the rule's mode when last seen: audit, warn, enforce
        manager_id INTEGER,              -- the deal's responsible manager (users.id)
        opened TEXT NOT NULL,            -- when the deal started breaking the rule (ISO 8601, portal offset)
        detected TEXT NOT NULL,          -- when crmbridge first found it (UTC)
        checked TEXT NOT NULL,           -- the last evaluation that still found it (UTC)
        resolved TEXT,                   -- the first evaluation that no longer found it (UTC); NULL = open
        missing TEXT,                    -- JSON list of missing / wrong regulated items
        message TEXT,                    -- what the manager reads
        details TEXT                     -- JSON: the rule's specifics
    );
    CREATE UNIQUE INDEX violations_open_key ON violations(key) WHERE resolved IS NULL;
    CREATE INDEX violations_deal ON violations(deal_id, rule);
    CREATE INDEX violations_open_rule ON violations(rule, manager_id) WHERE resolved IS NULL;
    """,
    # 3: enforcement (issue 4): the audit log / outbox of every write to the CRM, and the round-robin pointers.
    """
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        idempotency_key TEXT NOT NULL UNIQUE,  -- what the action fixes (rule, deal, stage entry): written once
        marker TEXT NOT NULL,            -- [crmbridge:<hash>] put into created tasks / comments, found on reconcile
        run_id TEXT,                     -- the enforce run that last touched the row
        planned TEXT NOT NULL,           -- when first planned (UTC)
        updated TEXT NOT NULL,           -- last status change (UTC)
        rule TEXT NOT NULL,              -- R1..R11; a revert fixing several rules lists them: R1,R2
        deal_id INTEGER NOT NULL,        -- deals.id
        kind TEXT NOT NULL,              -- create_task, revert_stage, set_field, reassign, comment, notify
        method TEXT NOT NULL,            -- the REST method, e.g. tasks.task.add
        payload TEXT NOT NULL,           -- JSON: the method's parameters as sent
        summary TEXT,                    -- one line: what the action does
        reason TEXT,                     -- the violation's message (why)
        clause TEXT,                     -- the regulation's clause
        violation_keys TEXT,             -- JSON list of violations.key it fixes
        recipient_id INTEGER,            -- the user a task / notification goes to
        status TEXT NOT NULL,            -- intent (recorded before the write; unknown outcome if found later),
                                         -- done, failed, cancelled (no longer needed when its outcome was unknown)
        attempts INTEGER NOT NULL DEFAULT 0,  -- writes tried
        result TEXT,                     -- JSON: the CRM's answer, or how reconciliation found it
        crm_ids TEXT,                    -- JSON list of ids created in the CRM (task, comment, notification)
        error TEXT,                      -- the last error: code and description
        sent TEXT,                       -- when the write was last sent (UTC)
        done TEXT                        -- when the result was recorded (UTC)
    );
    CREATE INDEX actions_deal ON actions(deal_id, done);
    CREATE INDEX actions_status ON actions(status);
    CREATE INDEX actions_done ON actions(done);

    CREATE TABLE enforce_state (
        name TEXT PRIMARY KEY,           -- e.g. rotation:b2b (next member index of a team's round robin, R7)
        value TEXT
    );
    """,
    # 4: CRM to-dos (crm.activity.list, PROVIDER_ID CRM_TODO) of deals: a stage task may be a to-do (R3 kind: todo).
    """
    CREATE TABLE activities (
        id INTEGER PRIMARY KEY,          -- crm.activity.list ID
        deal_id INTEGER,                 -- OWNER_ID of an activity with OWNER_TYPE_ID 2 (deal)
        provider_id TEXT,                -- PROVIDER_ID, e.g. CRM_TODO
        subject TEXT,                    -- SUBJECT: the to-do's title (crm.activity.todo.add `title`)
        completed INTEGER,               -- 1 when COMPLETED = Y
        responsible_id INTEGER,          -- RESPONSIBLE_ID (users.id)
        deadline TEXT,                   -- DEADLINE, ISO 8601 with the portal's offset
        created TEXT,                    -- CREATED
        last_updated TEXT,               -- LAST_UPDATED: the incremental cursor's field; when completed, its closing time
        raw TEXT NOT NULL                -- the record exactly as the portal sent it (JSON)
    );
    CREATE INDEX activities_deal ON activities(deal_id);
    """,
    # 5: tasks and to-dos deleted or unbound on the portal leave the cache (a stale task would satisfy R3).
    """
    ALTER TABLE tasks ADD COLUMN synced_at TEXT;       -- when crmbridge last saw it on the portal (UTC)
    ALTER TABLE activities ADD COLUMN synced_at TEXT;
    """,
    # 6: plans and KPIs (issue 10): departments, currency rates, calls / meetings / e-mails, the bound smart
    # process's plan items, resolved plans with their source, and KPI snapshots kept as history.
    """
    CREATE TABLE departments (
        id INTEGER PRIMARY KEY,          -- department.get ID
        name TEXT,
        parent_id INTEGER,               -- PARENT (NULL at the top)
        head_id INTEGER,                 -- UF_HEAD (users.id)
        sort INTEGER,
        raw TEXT NOT NULL
    );

    CREATE TABLE currencies (
        currency TEXT PRIMARY KEY,       -- crm.currency.list CURRENCY, e.g. RUB
        amount_cnt REAL,                 -- AMOUNT_CNT units of this currency ...
        amount REAL,                     -- ... cost AMOUNT units of the base currency
        base INTEGER,                    -- 1 for the portal's base currency (BASE = Y)
        sort INTEGER,
        date_update TEXT,
        raw TEXT NOT NULL
    );

    CREATE TABLE communications (
        id INTEGER PRIMARY KEY,          -- crm.activity.list ID of a call, meeting or e-mail (TYPE_ID 2, 1, 4)
        kind TEXT,                       -- call, meeting, email
        type_id INTEGER,
        provider_id TEXT,                -- e.g. VOXIMPLANT_CALL, CRM_MEETING, CRM_EMAIL
        incoming INTEGER,                -- 1 incoming, 0 outgoing (DIRECTION 1 / 2), NULL for meetings
        owner_type_id INTEGER,           -- 2 deal, 3 contact, 4 company, 1 lead ...
        owner_id INTEGER,
        deal_id INTEGER,                 -- OWNER_ID when a deal owns it
        subject TEXT,
        completed INTEGER,               -- 1 when COMPLETED = Y
        responsible_id INTEGER,          -- users.id
        start_time TEXT,                 -- START_TIME: when the call / meeting took place, the e-mail was sent
        end_time TEXT,
        created TEXT,
        last_updated TEXT,
        synced_at TEXT,
        raw TEXT NOT NULL
    );
    CREATE INDEX communications_responsible ON communications(responsible_id, start_time);

    CREATE TABLE plan_items (
        id INTEGER PRIMARY KEY,          -- crm.item.list id of the bound smart process's item
        entity_type_id INTEGER NOT NULL,
        updated_time TEXT,
        synced_at TEXT,
        raw TEXT NOT NULL
    );

    CREATE TABLE plans (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,            -- file (plans.yaml) or portal (the bound smart process)
        origin TEXT NOT NULL,            -- plans.yaml:12:9, "portal smart process 1038 item 17", or spread
        scope TEXT NOT NULL,             -- manager, department or company
        scope_id TEXT,                   -- users.id / departments.id; NULL for the company
        direction TEXT,                  -- a regulated direction; NULL = all directions
        metric TEXT NOT NULL,            -- a KPI id of kpi.yaml
        period TEXT NOT NULL,            -- 2026-11, 2026-Q4, 2026-H2, 2026
        target REAL NOT NULL,
        written INTEGER NOT NULL,        -- 1 as written, 0 spread from a larger period
        loaded_at TEXT NOT NULL          -- when crmbridge last read the plans (UTC)
    );
    CREATE INDEX plans_key ON plans(metric, period, scope, scope_id);

    CREATE TABLE kpi_snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        period TEXT NOT NULL,            -- 2026-11, 2026-Q4, ...
        scope TEXT NOT NULL,             -- manager, department, company
        manager_id INTEGER,              -- users.id for scope manager
        department_id INTEGER,           -- departments.id for scope department
        direction TEXT,                  -- NULL = all directions
        kpi TEXT NOT NULL,
        plan REAL,
        fact REAL,
        share_done REAL,                 -- fact / plan
        computed_at TEXT NOT NULL,       -- when this figure was computed (UTC)
        superseded_at TEXT               -- when a recomputation gave another figure (NULL = current)
    );
    CREATE UNIQUE INDEX kpi_snapshots_current ON kpi_snapshots(
        period, scope, COALESCE(manager_id, -1), COALESCE(department_id, -1), COALESCE(direction, ''), kpi)
        WHERE superseded_at IS NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
