"""Plans and KPIs end to end: the sandbox portal (smart process, currencies, departments, calls) over HTTP, the sync,
and the commands a head of sales and a payroll clerk run."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from crmbridge.cache.store import open_cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox import catalog as c
from crmbridge.sync import Syncer

pytestmark = pytest.mark.integration
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
JSON_KEYS = {"period", "scope", "manager_id", "direction", "kpi", "plan", "fact", "share_done"}


@pytest.fixture(scope="module")
def portal() -> Any:
    with SandboxPortal(deals=700, seed=5, limits=False) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def workspace(portal: SandboxPortal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synced cache and a copy of the shipped mapping files."""
    root = tmp_path_factory.mktemp("kpi")
    shutil.copytree(MAPPINGS, root / "mappings")
    shutil.copytree(MAPPINGS.parent / "jobs", root / "jobs")
    cache = open_cache(root / "cache.db")
    Syncer(Bitrix24Reader(Bitrix24Client(portal.webhook_url)), cache, plan_entity_type=c.PLANS_ENTITY_TYPE_ID).run(full=True)
    cache.close()
    return root


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({"CRMBRIDGE_CACHE_PATH": str(root / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(root / "mappings"),
                        "CRMBRIDGE_JOBS_DIR": str(root / "jobs"), "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=root, env=environment, capture_output=True,
                          text=True, timeout=180)


# ---------------------------------------------------------------- the sandbox speaks the documented shapes


def post(portal: SandboxPortal, method: str, params: dict[str, Any]) -> requests.Response:
    return requests.post(portal.webhook_url + method, json=params, timeout=10)


def test_crm_item_list_serves_the_plans_smart_process_as_documented(portal: SandboxPortal) -> None:
    answer = post(portal, "crm.item.list", {"entityTypeId": c.PLANS_ENTITY_TYPE_ID, "order": {"id": "ASC"},
                                            "filter": {">id": 2, "assignedById": 6}, "select": ["id", c.PLAN_FIELD_PERIOD,
                                                                                             c.PLAN_FIELD_TARGET]}).json()
    items = answer["result"]["items"]
    assert answer["total"] == len(items) > 0 and items == sorted(items, key=lambda item: item["id"])
    assert set(items[0]) == {"id", c.PLAN_FIELD_PERIOD, c.PLAN_FIELD_TARGET}
    assert isinstance(items[0]["id"], int) and isinstance(items[0][c.PLAN_FIELD_TARGET], float)  # typed, camelCase
    everything = post(portal, "crm.item.list", {"entityTypeId": c.PLANS_ENTITY_TYPE_ID, "start": -1}).json()
    assert everything["result"]["items"][0]["entityTypeId"] == c.PLANS_ENTITY_TYPE_ID
    missing = post(portal, "crm.item.list", {"entityTypeId": 1999})
    assert missing.status_code == 400 and missing.json()["error"] == "NOT_FOUND"
    bad_filter = post(portal, "crm.item.list", {"entityTypeId": c.PLANS_ENTITY_TYPE_ID, "filter": {"FIELD": 1}})
    assert bad_filter.json()["error"] == "INVALID_ARG_VALUE"


def test_currencies_and_departments_as_documented(portal: SandboxPortal) -> None:
    currencies = post(portal, "crm.currency.list", {"order": {"sort": "asc"}}).json()
    assert currencies["total"] == 0  # "currently always 0"
    assert [row["CURRENCY"] for row in currencies["result"]] == ["RUB", "USD", "EUR", "KZT"]
    assert currencies["result"][0]["BASE"] == "Y" and currencies["result"][2]["AMOUNT"] == "98.2000"
    departments = post(portal, "department.get", {"sort": "ID", "order": "ASC"}).json()["result"]
    assert departments[1] == {"ID": "2", "NAME": "B2B", "SORT": 200, "UF_HEAD": "2", "PARENT": "1"}
    calls = post(portal, "crm.activity.list", {"filter": {"TYPE_ID": 2, "COMPLETED": "Y"}, "start": -1}).json()["result"]
    assert calls and {row["PROVIDER_ID"] for row in calls} == {"VOXIMPLANT_CALL"}


def test_sync_caches_plan_items_currencies_departments_and_communications(workspace: Path, portal: SandboxPortal) -> None:
    cache = open_cache(workspace / "cache.db")
    try:
        assert cache.count("plan_items") == len(portal.state.plan_items) == 3 * 2 * 14  # B2C, 2 metrics, 14 months
        assert cache.count("currencies") == 4 and cache.count("departments") == 3
        kinds = {row["kind"] for row in cache.query("SELECT DISTINCT kind FROM communications")}
        assert kinds == {"call", "meeting", "email"}
        on_contacts = cache.count("communications", "deal_id IS NULL")
        assert on_contacts > 0  # calls with the contact, not the deal, count for the manager too
        foreign = cache.query("SELECT currency, COUNT(*) AS n FROM deals WHERE currency != 'RUB' GROUP BY 1")
        assert {row["currency"] for row in foreign} <= {"USD", "EUR"} and foreign
    finally:
        cache.close()


def test_sync_without_the_department_scope_keeps_going(tmp_path: Path) -> None:
    with SandboxPortal(deals=30, seed=2, limits=False, scopes=("crm", "task", "im", "user")) as sandbox:
        cache = open_cache(tmp_path / "cache.db")
        summary = Syncer(Bitrix24Reader(Bitrix24Client(sandbox.webhook_url)), cache).run(full=True)
        assert summary.departments is None and cache.count("departments") == 0 and summary.currencies == 4
        cache.close()


# ---------------------------------------------------------------- the commands


def test_kpi_json_has_the_documented_keys_and_the_company_is_the_sum_of_its_managers(workspace: Path) -> None:
    result = cli(workspace, "kpi", "--period", "2026-11", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(JSON_KEYS <= set(row) for row in rows)
    assert {row["scope"] for row in rows} == {"manager", "department", "company"}
    for kpi in ("revenue", "won_deals", "new_clients"):
        for direction in (None, "project_sales", "b2c"):
            managers = [row["fact"] for row in rows if row["scope"] == "manager" and row["kpi"] == kpi
                        and row["direction"] == direction]
            company = next(row for row in rows if row["scope"] == "company" and row["kpi"] == kpi
                           and row["direction"] == direction)
            assert company["manager_id"] is None and company["fact"] == pytest.approx(sum(managers), abs=0.05)
    # the B2C team's plans come from the smart process, the B2B team's from plans.yaml
    planned = {row["manager_id"] for row in rows if row["kpi"] == "revenue" and row["plan"] and row["scope"] == "manager"}
    assert {"3", "6"} <= {str(m) for m in planned}
    one = next(row for row in rows if row["plan"] and row["fact"] is not None and row["scope"] == "manager")
    assert one["share_done"] == pytest.approx(one["fact"] / one["plan"], abs=1e-3)


def test_kpi_filters_csv_and_terminal(workspace: Path) -> None:
    rows = json.loads(cli(workspace, "kpi", "--period", "2026-Q4", "--manager", "3", "--direction", "b2b_new",
                          "--json").stdout)
    assert rows and {(row["scope"], row["manager_id"], row["direction"], row["period"]) for row in rows} == {
        ("manager", 3, "b2b_new", "2026-Q4")}
    revenue = next(row for row in rows if row["kpi"] == "revenue")
    assert revenue["plan"] == 6_000_000  # plans.yaml: manager 3, b2b_new, 2026-Q4
    table = cli(workspace, "kpi", "--period", "2026-11", "--csv")
    parsed = list(csv.DictReader(io.StringIO(table.stdout)))
    assert parsed and JSON_KEYS <= set(parsed[0])
    terminal = cli(workspace, "kpi", "--period", "2026-11")
    assert terminal.returncode == 0 and "План и факт, ноябрь 2026" in terminal.stdout and "Компания" in terminal.stdout
    bad = cli(workspace, "kpi", "--period", "2026-13")
    assert bad.returncode == 2 and "there is no month 13" in bad.stderr
    typo = cli(workspace, "kpi", "--direction", "b2b_nwe")
    assert typo.returncode == 2 and 'did you mean "b2b_new"' in typo.stderr


def test_snapshot_is_idempotent_and_keeps_recomputed_figures_as_history(workspace: Path, portal: SandboxPortal) -> None:
    first = json.loads(cli(workspace, "kpi", "snapshot", "--period", "2026-10", "--json").stdout)
    assert first["written"] > 0 and first["changed"] == []
    again = json.loads(cli(workspace, "kpi", "snapshot", "--period", "2026-10", "--json").stdout)
    assert again == {"period": "2026-10", "written": 0, "unchanged": first["written"], "changed": []}
    # a plan changes: the affected figures are superseded, not overwritten
    plans = workspace / "mappings" / "plans.yaml"
    original = plans.read_text(encoding="utf-8")
    plans.write_text(original.replace("targets: {2026: 50_000_000, 2027: 54_000_000}",
                                      "targets: {2026: 50_000_000, 2026-10: 9_000_000, 2027: 54_000_000}"),
                     encoding="utf-8")
    try:
        changed = json.loads(cli(workspace, "kpi", "snapshot", "--period", "2026-10", "--json").stdout)
    finally:
        plans.write_text(original, encoding="utf-8")
    assert changed["changed"] and all(item["plan"] != item["plan_before"] for item in changed["changed"])
    assert any(item["manager_id"] == "4" and item["plan"] == 9_000_000 for item in changed["changed"])
    cache = open_cache(workspace / "cache.db")
    try:
        history = cache.query("SELECT plan, superseded_at FROM kpi_snapshots WHERE period = '2026-10' AND scope = "
                              "'manager' AND manager_id = 4 AND kpi = 'revenue' AND direction IS NULL ORDER BY id")
        assert len(history) == 2 and history[0]["superseded_at"] is not None and history[1]["superseded_at"] is None
        assert history[1]["plan"] == 9_000_000
        assert cache.query("SELECT DISTINCT source FROM plans ORDER BY 1") == [{"source": "file"}, {"source": "portal"}]
    finally:
        cache.close()


def test_the_monthly_snapshot_is_a_scheduled_job(workspace: Path) -> None:
    listed = cli(workspace, "jobs", "list")
    assert listed.returncode == 0 and "kpi snapshot" in listed.stdout and "0 6 1 * *" in listed.stdout
    run = cli(workspace, "jobs", "run", "kpi-snapshot")
    assert run.returncode == 0, run.stderr
    cache = open_cache(workspace / "cache.db")
    try:
        assert cache.query("SELECT status FROM job_runs WHERE job = 'kpi-snapshot'") == [{"status": "done"}]
        assert cache.count("kpi_snapshots") > 0
    finally:
        cache.close()


def test_plans_check_import_and_export(workspace: Path, tmp_path: Path) -> None:
    assert cli(workspace, "plans", "check").returncode == 0
    assert cli(workspace, "check").returncode == 0
    exported = cli(workspace, "plans", "export")
    table = list(csv.reader(io.StringIO(exported.stdout)))
    assert table[0] == ["manager", "period", "metric", "target", "direction"]
    assert ["3", "2026-Q4", "revenue", "15000000", ""] in table and any(row[0] == "6" for row in table[1:])
    # the head of sales' table: a CSV with Russian headers and a semicolon
    sheet = tmp_path / "plan.csv"
    sheet.write_text("Менеджер;Период;Показатель;План\n2;2026-12;won_deals;9\n7;2027-01;revenue;3 500 000\n",
                     encoding="utf-8")
    imported = cli(workspace, "plans", "import", str(sheet))
    assert imported.returncode == 0, imported.stderr
    text = (workspace / "mappings" / "plans.yaml").read_text(encoding="utf-8")
    assert "2026-12: 9" in text and "manager: 7" in text
    assert "# Ирина Соколова" in text and "# the rest of the year (33,000,000)" in text  # the admin's comments stay
    # an XLSX with an inconsistency is refused with the row's place and both figures, and nothing is written
    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["manager", "period", "metric", "target"])
    book.active.append([3, "2026-Q4", "revenue", 1])
    book.save(tmp_path / "plan.xlsx")
    refused = cli(workspace, "plans", "import", str(tmp_path / "plan.xlsx"))
    assert refused.returncode == 2 and "2026-Q4 is 1, but the parts written already sum to 9,500,000" in refused.stderr
    assert (workspace / "mappings" / "plans.yaml").read_text(encoding="utf-8") == text
    out = tmp_path / "export.xlsx"
    assert cli(workspace, "plans", "export", "--out", str(out)).returncode == 0 and out.stat().st_size > 0


def test_plans_check_names_file_line_and_both_figures(workspace: Path) -> None:
    plans = workspace / "mappings" / "plans.yaml"
    original = plans.read_text(encoding="utf-8")
    plans.write_text(original.replace("targets: {2026: 186_000_000}", "targets: {2026: 190_000_000}"), encoding="utf-8")
    try:
        result = cli(workspace, "plans", "check")
        also = cli(workspace, "check")
    finally:
        plans.write_text(original, encoding="utf-8")
    assert result.returncode == 2 and also.returncode == 2
    line = next(line for line in original.splitlines() if "186_000_000" in line)
    number = original.splitlines().index(line) + 1
    assert f"plans.yaml:{number}:" in result.stderr
    assert "is 190,000,000, but its managers' plans sum to 186,000,000" in result.stderr


def test_payout_csv_has_one_row_per_manager_with_its_figures(workspace: Path) -> None:
    result = cli(workspace, "payout", "--period", "2026-11", "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and "1" not in {row["manager_id"] for row in rows}  # the head is excluded in motivation.yaml
    for row in rows:
        variable = float(row["commission"]) + float(row["bonus"]) + float(row["kpi_bonus"]) - float(row["deduction"])
        assert float(row["variable_before_cap"]) == pytest.approx(variable, abs=0.02)
        assert float(row["total"]) == pytest.approx(float(row["base_salary"]) + min(variable, 400000), abs=0.02)
        assert float(row["commission"]) <= 250000
    assert cli(workspace, "payout", "--period", "2026-Q4").returncode == 2


class _Structure(HTMLParser):
    """Checks that every opened element is closed in order (void elements aside)."""

    VOID = {"meta", "br", "link", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def validate_report(text: str) -> _Structure:
    assert text.startswith("<!DOCTYPE html>")
    parser = _Structure()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []
    for tag in ("script", "link", "iframe", "img"):
        assert tag not in parser.tags, tag  # nothing loads from elsewhere; no script runs
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    # every chart is well-formed SVG
    start = 0
    charts = 0
    while (start := text.find("<svg", start)) != -1:
        end = text.index("</svg>", start) + len("</svg>")
        root = ElementTree.fromstring(text[start:end])
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.find("{http://www.w3.org/2000/svg}title") is not None
        charts += 1
        start = end
    assert charts >= 5
    return parser


def test_report_is_one_small_offline_file_with_valid_html_and_svg(workspace: Path) -> None:
    out = workspace / "report.html"
    result = cli(workspace, "report", "--html", str(out), "--period", "2026-11")
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    validate_report(text)
    assert len(text.encode("utf-8")) < 300 * 1024
    assert "Отчёт по продажам: ноябрь 2026" in text and "Воронка" in text and "Соблюдение регламента" in text


def test_report_escapes_what_came_from_the_crm(workspace: Path, portal: SandboxPortal) -> None:
    cache = open_cache(workspace / "cache.db")
    try:
        cache.db.execute("UPDATE users SET name = '<script>alert(1)</script>' WHERE id = 3")
        cache.db.conn.commit()
    finally:
        cache.close()
    out = workspace / "escaped.html"
    assert cli(workspace, "report", "--html", str(out), "--period", "2026-11").returncode == 0
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    validate_report(text)


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_a_real_browser(workspace: Path) -> None:
    out = workspace / "browser.html"
    assert cli(workspace, "report", "--html", str(out), "--period", "2026-11").returncode == 0
    shot = workspace / "report.png"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={workspace / 'chromium-profile'}"]
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<svg") >= 5 and "Отчёт по продажам" in dom.stdout  # parsed and laid out by Blink
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri()],
                   capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a rendered page, not a blank one
