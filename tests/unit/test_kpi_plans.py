"""Periods and plans: parsing, spreading, hierarchy checks with file:line:col and both figures, portal items, tables."""

from __future__ import annotations

import pytest

from crmbridge.kpi.tables import dump_plans
from crmbridge.kpi.periods import Period, PeriodError, Span, last_full_month, months_back
from crmbridge.kpi.plans import (
    Owner,
    PortalPlanFields,
    export_rows,
    merge_table,
    parse_plans,
    portal_plan_inputs,
    resolve,
    table_rows,
)

METRICS = ["revenue", "won_deals", "new_clients"]
DIRECTIONS = ["b2b_new", "b2c"]


# ---------------------------------------------------------------- periods


@pytest.mark.parametrize("text,kind,start,end,previous,year_ago", [
    ("2026-11", "month", "2026-11-01", "2026-12-01", "2026-10", "2025-11"),
    ("2026-01", "month", "2026-01-01", "2026-02-01", "2025-12", "2025-01"),  # across the year boundary
    ("2026-12", "month", "2026-12-01", "2027-01-01", "2026-11", "2025-12"),
    ("2026-Q1", "quarter", "2026-01-01", "2026-04-01", "2025-Q4", "2025-Q1"),
    ("2026-q4", "quarter", "2026-10-01", "2027-01-01", "2026-Q3", "2025-Q4"),
    ("2026-H1", "half", "2026-01-01", "2026-07-01", "2025-H2", "2025-H1"),
    ("2026-H2", "half", "2026-07-01", "2027-01-01", "2026-H1", "2025-H2"),
    (2026, "year", "2026-01-01", "2027-01-01", "2025", "2025"),
])
def test_periods(text, kind, start, end, previous, year_ago) -> None:
    period = Period.parse(text)
    assert (period.kind, str(period.start), str(period.end)) == (kind, start, end)
    assert (str(period.previous()), str(period.year_ago())) == (previous, year_ago)
    assert Period.parse(str(period)) == period


@pytest.mark.parametrize("text", ["2026-13", "2026-Q5", "2026-H3", "26-11", "ноябрь", "", "2026-11-05x"])
def test_bad_periods_say_how_to_write_one(text) -> None:
    with pytest.raises(PeriodError, match="2026-Q4"):
        Period.parse(text)


def test_period_tree_and_windows() -> None:
    year = Period.parse("2026")
    assert [str(p) for p in year.children()] == ["2026-H1", "2026-H2"]
    assert [str(p) for p in Period.parse("2026-H2").children()] == ["2026-Q3", "2026-Q4"]
    assert [str(p) for p in Period.parse("2026-Q4").children()] == ["2026-10", "2026-11", "2026-12"]
    assert Period.parse("2026-11").parent("quarter") == Period.parse("2026-Q4")
    assert str(last_full_month(Period.parse("2027-01").start)) == "2026-12"
    months = months_back(Period.parse("2026-02"), 3)
    assert [str(m) for m in months] == ["2025-12", "2026-01", "2026-02"]
    assert str(Span(months[0], months[-1]).previous()) == "2025-09..2025-11"
    assert Period.parse("2026-11").label("ru") == "ноябрь 2026" and Period.parse("2026-Q4").label("ru") == "IV кв. 2026"


# ---------------------------------------------------------------- plans.yaml

HEADER = "version: 1\nplans:\n"


def plans(text: str, **options):
    parsed = parse_plans(HEADER + text, "plans.yaml", metrics=METRICS, directions=DIRECTIONS, **options)
    return parsed


def targets(resolution, owner: Owner, metric: str = "revenue", direction=None) -> dict[str, float]:
    return {str(row.period): round(row.target, 2) for row in resolution.rows
            if row.owner == owner and row.metric == metric and row.direction == direction}


def test_a_quarter_is_spread_evenly_and_written_months_keep_their_figure() -> None:
    parsed = plans("  - manager: 3\n    metric: revenue\n    targets: {2026-Q4: 3000, 2026-10: 1200}\n")
    assert parsed.problems == []
    result = resolve(parsed.inputs)
    assert result.problems == []
    assert targets(result, Owner("manager", "3")) == {"2026-10": 1200, "2026-11": 900, "2026-12": 900, "2026-Q4": 3000}
    rows = {str(row.period): row for row in result.rows}
    assert rows["2026-10"].written and rows["2026-Q4"].written and not rows["2026-11"].written
    assert rows["2026-10"].origin == "plans.yaml:5:39"  # where the figure is written


def test_a_year_is_spread_by_weights() -> None:
    text = ("version: 1\nspread: season\nweights:\n  season: [2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]\nplans:\n"
            "  - {manager: 3, metric: won_deals, targets: {2026: 120}}\n")
    parsed = parse_plans(text, "plans.yaml", metrics=METRICS)
    result = resolve(parsed.inputs)
    months = targets(result, Owner("manager", "3"), "won_deals")
    assert months["2026-01"] == 20 and months["2026-02"] == 10 and months["2026-12"] == 0
    assert months["2026-Q1"] == 40 and months["2026-H2"] == 50 and months["2026"] == 120


def test_months_that_do_not_sum_to_their_quarter_are_one_error_naming_both_figures() -> None:
    parsed = plans("  - manager: 3\n    metric: revenue\n    targets:\n      2026-Q4: 3000\n      2026-10: 1000\n"
                   "      2026-11: 1000\n      2026-12: 1100\n")
    result = resolve(parsed.inputs)
    assert [str(problem) for problem in result.problems] == [
        "plans.yaml:6:16: revenue of manager 3: 2026-Q4 is 3,000, but its parts sum to 3,100: 2026-10 1,000 (line 7)"
        " + 2026-11 1,000 (line 8) + 2026-12 1,100 (line 9) — make them agree, or remove the figures you do not mean"
        " (a larger period alone is spread over its months)"]


def test_quarters_against_the_year_and_parts_that_exceed_it() -> None:
    parsed = plans("  - manager: 3\n    metric: revenue\n    targets: {2026: 100, 2026-Q1: 30, 2026-Q2: 30, 2026-Q3: 30,"
                   " 2026-Q4: 20}\n  - manager: 4\n    metric: revenue\n    targets: {2026-H1: 50, 2026-Q1: 40, 2026-Q2: 30}\n"
                   "  - manager: 5\n    metric: revenue\n    targets: {2026-Q4: 10, 2026-11: 12}\n")
    problems = [str(problem) for problem in resolve(parsed.inputs).problems]
    assert any(p.startswith("plans.yaml:5:21: revenue of manager 3: 2026 is 100, but its parts sum to 110") for p in problems)
    assert any(p.startswith("plans.yaml:8:24: revenue of manager 4: 2026-H1 is 50, but its parts sum to 70") for p in problems)
    assert any(p.startswith("plans.yaml:11:24: revenue of manager 5: 2026-Q4 is 10, but the parts written already "
                            "sum to 12") for p in problems)


def test_managers_must_sum_to_a_company_or_department_figure() -> None:
    parsed = plans("  - {manager: 3, metric: revenue, targets: {2026-Q4: 300}}\n"
                   "  - {manager: 4, metric: revenue, targets: {2026-Q4: 200}}\n"
                   "  - {company: true, metric: revenue, targets: {2026-Q4: 600}}\n"
                   "  - {department: 7, metric: revenue, targets: {2026-Q4: 250}}\n")
    result = resolve(parsed.inputs, members={"7": {"3"}})
    assert [str(p) for p in result.problems] == [
        "plans.yaml:5:57: revenue of the company 2026-Q4 is 600, but its managers' plans sum to 500 (3: 300, 4: 200)"
        " — make them agree, or remove the figure to use the managers' sum",
        "plans.yaml:6:57: revenue of department 7 2026-Q4 is 250, but its managers' plans sum to 300 (3: 300)"
        " — make them agree, or remove the figure to use the managers' sum"]
    # without the portal's departments (plans check without a cache) department figures are not checked
    assert len(resolve(parsed.inputs).problems) == 1


def test_plan_book_sums_the_hierarchy() -> None:
    parsed = plans("  - {manager: 3, direction: b2b_new, metric: revenue, targets: {2026-11: 100}}\n"
                   "  - {manager: 3, direction: b2c, metric: revenue, targets: {2026-11: 50}}\n"
                   "  - {manager: 4, metric: revenue, targets: {2026-Q4: 300}}\n"
                   "  - {company: true, metric: won_deals, targets: {2026-Q4: 30}}\n")
    book = resolve(parsed.inputs).book
    november = Period.parse("2026-11")
    assert book.target(Owner("manager", "3"), None, "revenue", november) == 150  # directions summed
    assert book.target(Owner("company"), None, "revenue", november) == 250  # managers summed
    assert book.target(Owner("company"), "b2c", "revenue", november) == 50
    # manager 3 has no plan for the whole quarter (no December): the company's is what its managers have
    assert book.target(Owner("company"), None, "revenue", Period.parse("2026-Q4")) == 300
    assert book.target(Owner("manager", "4"), None, "revenue", Period.parse("2026-Q4")) == 300
    assert book.target(Owner("company"), None, "won_deals", november) == 10  # the company's own figure, spread


@pytest.mark.parametrize("entry,message", [
    ("{manager: 3, metric: revnue, targets: {2026-11: 1}}", 'unknown metric "revnue" — did you mean "revenue"?'),
    ("{manager: 3, direction: b2x, metric: revenue, targets: {2026-11: 1}}", 'unknown direction "b2x" — did you mean "b2c"?'),
    ("{manager: 3, metric: revenue, targets: {2026-13: 1}}", '"2026-13": there is no month 13'),
    ("{manager: 3, metric: revenue, targets: {2026-11: -5}}", "out of range"),
    ("{manager: 3, department: 2, metric: revenue, targets: {2026-11: 5}}", "exactly one of manager, department"),
    ("{manager: 3, metric: revenue, target: {2026-11: 5}}", 'unknown key "target" — did you mean "targets"?'),
    ("{manager: 3, metric: revenue, spread: seasonl, targets: {2026: 5}}", 'unknown spread "seasonl"'),
    ("{manager: 99, metric: revenue, targets: {2026: 5}}", "no user 99 on the portal"),
])
def test_file_problems_have_a_position_and_a_hint(entry, message) -> None:
    parsed = plans(f"  - {entry}\n", managers={"3", "4"})
    assert parsed.problems, entry
    text = str(parsed.problems[0])
    assert text.startswith("plans.yaml:3:") and message in text


def test_a_period_written_twice_is_an_error_and_the_file_wins_over_the_portal() -> None:
    parsed = plans("  - {manager: 3, metric: revenue, targets: {2026-11: 5}}\n"
                   "  - {manager: 3, metric: revenue, targets: {2026-11: 6}}\n")
    assert "written twice (also at plans.yaml:3:" in str(resolve(parsed.inputs).problems[0])
    fields = PortalPlanFields("assignedById", "ufPeriod", "ufMetric", "ufTarget", metrics={"301": "revenue"})
    portal, problems = portal_plan_inputs([{"id": 9, "assignedById": 3, "ufPeriod": "2026-11", "ufMetric": 301,
                                            "ufTarget": 7.0}], fields, 1038, metrics=METRICS)
    result = resolve([parsed.inputs[0], *portal])
    assert result.problems == [] and targets(result, Owner("manager", "3")) == {"2026-11": 5}
    assert result.notes == ["portal smart process 1038 item 9: revenue of manager 3 2026-11 7 is overridden by "
                            "plans.yaml:3:54 (5)"]


def test_portal_items_become_plans_and_bad_items_are_named() -> None:
    fields = PortalPlanFields("assignedById", "ufPeriod", "ufMetric", "ufTarget", "ufDirection",
                              metrics={"301": "revenue"}, directions={"11": "b2c"})
    items = [
        {"id": 1, "assignedById": 6, "ufPeriod": "2026-11", "ufMetric": 301, "ufTarget": 1500000.0, "ufDirection": 11},
        {"id": 2, "assignedById": 6, "ufPeriod": "2026-12-01T00:00:00+03:00", "ufMetric": "won_deals", "ufTarget": "12"},
        {"id": 3, "assignedById": 6, "ufPeriod": "ноябрь", "ufMetric": 301, "ufTarget": 1.0},
        {"id": 4, "assignedById": 0, "ufPeriod": "2026-11", "ufMetric": 301, "ufTarget": 1.0},
        {"id": 5, "assignedById": 6, "ufPeriod": "2026-11", "ufMetric": 399, "ufTarget": 1.0},
        {"id": 6, "assignedById": 6, "ufPeriod": "2026-11", "ufMetric": 301, "ufTarget": "много"},
    ]
    found, problems = portal_plan_inputs(items, fields, 1038, metrics=METRICS, directions=DIRECTIONS)
    assert [(i.owner.id, str(i.period), i.metric, i.target, i.direction, i.source) for i in found] == [
        ("6", "2026-11", "revenue", 1500000.0, "b2c", "portal"), ("6", "2026-12", "won_deals", 12.0, None, "portal")]
    assert [p.where for p in problems] == [f"portal smart process 1038 item {n}" for n in (3, 4, 5, 6)]
    assert '"ноябрь" is not a period' in str(problems[0]) and 'unknown metric "399"' in str(problems[2])


def test_the_head_of_sales_table_merges_into_plans_and_exports_back() -> None:
    cells = [["Менеджер", "Период", "Показатель", "План"], [3, "2026-11", "revenue", "1 500 000"],
             [4.0, "2026-Q4", "won_deals", 30], ["", "", "", ""], ["x", "2026-11", "revenue", 5],
             [3, "2026-13", "revenue", 5], [3, "2026-12", "revenue", "abc"]]
    rows, problems = table_rows(cells, "plan.csv")
    assert [(r.manager, str(r.period), r.metric, r.target) for r in rows] == [
        ("3", "2026-11", "revenue", 1500000.0), ("4", "2026-Q4", "won_deals", 30.0)]
    assert [p.where for p in problems] == ["plan.csv:5", "plan.csv:6", "plan.csv:7"]
    merged = merge_table({"version": 1, "plans": [{"manager": 3, "metric": "revenue", "targets": {"2026-10": 9}}]}, rows)
    assert merged["plans"] == [{"manager": 3, "metric": "revenue", "targets": {"2026-10": 9, "2026-11": 1500000}},
                               {"manager": 4, "metric": "won_deals", "targets": {"2026-Q4": 30}}]
    table, missing = table_rows([["manager", "metric"]], "x.csv")
    assert table == [] and "no column period, target" in str(missing[0])
    parsed = parse_plans(dump_plans(merged), "plans.yaml", metrics=METRICS)
    exported = export_rows(resolve(parsed.inputs).rows)
    assert exported == [["manager", "period", "metric", "target", "direction"], ["3", "2026-10", "revenue", 9, ""],
                        ["3", "2026-11", "revenue", 1500000, ""], ["4", "2026-Q4", "won_deals", 30, ""]]
