"""What enforcement does to people's work, against the sandbox: stage tasks after a revert, R11 and crmbridge's own
writes, deactivated managers, breaches too old to push (issue 7, items 1 to 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.enforce.plan import ActionKind
from crmbridge.enforce.run import evaluate
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.model import Mode
from crmbridge.regulation.evaluate import Evaluator, beyond_look_back
from crmbridge.sync import Syncer
from tests.integration.enforce_kit import MAPPINGS, fast_client, run, shipped, synced, working_moment, writes

pytestmark = pytest.mark.integration

RULES = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11")


def only(**modes: Mode) -> dict[str, Mode]:
    return {rule: modes.get(rule, Mode.OFF) for rule in RULES}


def stage_titles(mappings) -> dict[tuple[str, str], str]:
    """(pipeline, CRM stage) -> the title of the regulated stage's task."""
    titles = {}
    for category, pipeline in mappings.binding.pipelines.items():
        direction = mappings.regulation.directions.get(pipeline.direction)
        if direction is None:
            continue
        tasks = {stage.id: stage.task.title for stage in direction.stages if stage.task}
        for crm_stage, stage in pipeline.stages.items():
            if stage in tasks:
                titles[category, crm_stage] = tasks[stage]
    return titles


def test_after_a_revert_the_deal_has_one_open_task_of_its_stage_and_days_later_nothing_is_written(
        make_portal, cache) -> None:
    portal, client = synced(make_portal, cache, deals=300)
    mappings = shipped()
    modes = only(R1=Mode.ENFORCE, R2=Mode.ENFORCE, R3=Mode.ENFORCE, R4=Mode.ENFORCE)
    first = run(client, cache, mappings, modes)
    reverts = [a for a in first.to_write if a.kind is ActionKind.REVERT_STAGE]
    assert len(reverts) >= 10
    titles = stage_titles(mappings)
    state = portal.state
    for revert in reverts:
        deal = state.deals.rows[int(revert.deal)]
        back_in = titles.get((deal["CATEGORY_ID"], deal["STAGE_ID"]))
        moved_out_of = titles.get((deal["CATEGORY_ID"], revert.summary.split(" ")[2]))
        tasks = state.deal_tasks(int(revert.deal))
        if back_in is not None:  # exactly one open task for the stage the deal is back in
            assert sum(t["title"] == back_in and t["status"] != "5" for t in tasks) == 1, revert.deal
        if moved_out_of is not None and moved_out_of != back_in:  # and crmbridge set none for the one it left
            assert not any(t["title"] == moved_out_of and "[crmbridge:" in t["description"] for t in tasks), revert.deal
    # days later, nobody having touched anything: nothing new (R3's grace has long passed for the re-entered stages)
    portal.advance(4 * 86400)
    before = writes(portal)
    later = run(client, cache, mappings, modes, now=lambda: datetime.now(UTC) + timedelta(days=4))
    assert later.to_write == [] and writes(portal) == before


def test_r11_counts_peoples_activity_not_crmbridges_own_tasks_comments_and_to_dos(make_portal, cache) -> None:
    portal, client = synced(make_portal, cache, deals=300)
    modes = only(R11=Mode.WARN)
    report = run(client, cache, shipped(), modes)
    stale = report.before.by_rule.get("R11", 0)
    flagged = [a for a in report.to_write if a.kind is ActionKind.CREATE_TASK]
    assert stale >= 5 and len(flagged) == stale
    # the deals got crmbridge's task (and their LAST_ACTIVITY moved, authored by the webhook's user): still stale
    assert report.after is not None and report.after.by_rule.get("R11", 0) == stale
    deal_id = int(flagged[0].deal)
    assert portal.state.deals.rows[deal_id]["LAST_ACTIVITY_BY"] == "1"
    Syncer(Bitrix24Reader(client), cache).run(full=True)  # the moved LAST_ACTIVITY_TIME is in the cache now
    assert evaluate(cache, shipped(), datetime.now(UTC), modes=modes, record=False).compliance.by_rule["R11"] == stale
    # a person completing crmbridge's task is activity: that deal is no longer stale, and nothing is written again
    task_id = next(t for t in portal.state.deal_tasks(deal_id) if flagged[0].marker in t["description"])["id"]
    manager = int(portal.state.deals.rows[deal_id]["ASSIGNED_BY_ID"])
    portal.state.update_task(int(task_id), {"STATUS": 5}, user_id=manager)
    again = run(client, cache, shipped(), modes)
    assert again.before.by_rule.get("R11", 0) == stale - 1 and again.to_write == []


def test_crmbridges_own_revert_is_no_activity_a_stale_deal_it_moved_back_stays_stale(make_portal, cache) -> None:
    portal, client = synced(make_portal, cache, deals=2000)
    modes = only(R1=Mode.ENFORCE, R2=Mode.ENFORCE, R11=Mode.WARN)
    report = run(client, cache, shipped(), modes)
    reverted = {a.deal for a in report.to_write if a.kind is ActionKind.REVERT_STAGE}
    stale = {a.deal for a in report.to_write if a.kind is ActionKind.CREATE_TASK and a.rule == "R11"}
    both = reverted & stale
    assert both  # stale deals whose last move a person made broke R1 or R2: crmbridge moved them back
    # its move is not the manager's work: they are as stale after the run as before ("compliance after" is honest)
    assert report.after is not None and report.after.by_rule.get("R11", 0) == report.before.by_rule.get("R11", 0)
    judged = evaluate(cache, shipped(), datetime.now(UTC), modes=modes, deal_ids=sorted(map(int, both)), record=False)
    assert all(any(v.rule == "R11" for v in judged.violations.get(deal, [])) for deal in both)
    # days later, still untouched: the same breach, the task crmbridge set stands, nothing new about these deals
    later = run(client, cache, shipped(), modes, now=lambda: datetime.now(UTC) + timedelta(days=3))
    assert not [a for a in later.to_write if a.deal in both]


def test_nothing_goes_to_a_deactivated_manager_it_goes_to_the_deals_team_head(make_portal, cache) -> None:
    portal, _ = synced(make_portal, cache, deals=300)
    fired = [portal.add_deal({"TITLE": f"Сделка уволенного {n}", "CATEGORY_ID": 1, "ASSIGNED_BY_ID": 9}, user_id=9)
             for n in range(3)]  # open deals of user 9, deactivated: their stage tasks are due
    portal.advance(3600)
    client = fast_client(portal)
    Syncer(Bitrix24Reader(client), cache).run(full=False)
    report = run(client, cache, shipped(), only(R3=Mode.WARN, R5=Mode.WARN, R10=Mode.ENFORCE, R11=Mode.WARN),
                 now=lambda: datetime.now(UTC) + timedelta(hours=1))  # the portal's hour: R3's grace has passed
    to_fired = [a for a in report.to_write if a.recipient == "9"]
    assert to_fired == [] and not any(t["responsibleId"] == "9" and "[crmbridge:" in t["description"]
                                      for t in portal.state.tasks.rows.values())
    assert all(9 not in m["_pair"] for m in portal.state.messages)
    # the deal's team head (user 2 heads the B2B directions) gets the new deals' stage tasks
    stage_tasks = [a for a in report.to_write if a.kind is ActionKind.CREATE_TASK and int(a.deal) in fired]
    assert len(stage_tasks) == 3 and {a.recipient for a in stage_tasks} == {"2"}
    assert set(map(str, fired)) <= set(report.plan.rerouted) and report.as_dict()["rerouted"]
    assert sum("deactivated" in note for note in report.plan.notes) == len(report.plan.rerouted)


def test_old_breaches_are_recorded_and_shown_by_audit_not_pushed_to_people(make_portal, cache, tmp_path: Path) -> None:
    portal, client = synced(make_portal, cache, deals=300)
    mappings = shipped()
    moment = datetime.now(UTC)
    evaluation = evaluate(cache, mappings, moment, modes=only(R7=Mode.WARN, R8=Mode.WARN, R9=Mode.WARN), record=False)
    regulation = Evaluator.of(mappings.regulation, moment).regulation
    found = [v for vs in evaluation.violations.values() for v in vs]
    old = [v for v in found if beyond_look_back(v, regulation.directions[v.direction], moment)]
    assert len(old) >= 20 and len(old) < len(found) + 1
    report = run(client, cache, mappings, only(R7=Mode.WARN, R8=Mode.WARN, R9=Mode.WARN), now=lambda: moment)
    acted_on = {key for action in report.to_write for key in action.violation_keys}
    assert not acted_on & {v.key for v in old}  # nobody is told or tasked about a breach long past
    assert report.plan.old_breaches == dict(Counter(v.rule for v in old))
    # `crmbridge audit` records them and says how many are older than their rule's look-back
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({"CRMBRIDGE_CACHE_PATH": str(cache.path), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS)})
    audit = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--json", "--no-record"], cwd=tmp_path,
                           env=environment, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    shown = json.loads(audit.stdout)["beyond_look_back"]
    # (R7-R9 past their `look_back`; the stage rules on deals closed before their `closed_look_back`; R5 of clients
    # postponed longer ago than its last next-contact option)
    assert sum(shown.values()) >= len(old) and set(shown) <= {"R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"}
    human = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--no-record"], cwd=tmp_path, env=environment,
                           capture_output=True, text=True, timeout=120)
    assert "older than look-back" in human.stdout
    # each of them is marked in the list, and in the deal's explanation: recorded, not pushed
    listed = json.loads(audit.stdout)["open"]
    assert sum(item["beyond_look_back"] for item in listed) == sum(shown.values())
    assert {item["key"] for item in listed if item["beyond_look_back"]} >= {v.key for v in old}
    one = old[0]
    explained = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--deal", one.deal, "--json"],
                               cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert explained.returncode == 0, explained.stderr
    line = next(line for line in json.loads(explained.stdout)["rules"] if line["rule"] == one.rule)
    assert line["violations"] and all(v["beyond_look_back"] for v in line["violations"])
    told = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--deal", one.deal], cwd=tmp_path,
                          env={**environment, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    assert "look-back" in told.stdout and "not pushed" in told.stdout, told.stdout


def rules_of(action) -> set[str]:
    return set(action.rule.split(","))


def test_a_lead_created_months_ago_gets_no_r7_push_a_fresh_one_does_and_state_rules_act_on_old_deals(
        make_portal, cache) -> None:
    moment = working_moment(days_ahead=-10, hour=11)  # 11:00 Moscow on a past working day
    # the portal starts four months before that: the seeded deals and one inbound lead are that old
    portal = make_portal(deals=200, seed=3, limits=False, now=moment - timedelta(days=120))
    old_lead = portal.add_deal({"TITLE": "Заявка четыре месяца назад", "CATEGORY_ID": 3, "ASSIGNED_BY_ID": 6}, user_id=6)
    portal.advance(120 * 86400)
    fresh_lead = portal.add_deal({"TITLE": "Свежая заявка", "CATEGORY_ID": 3, "ASSIGNED_BY_ID": 6}, user_id=6)
    portal.advance(3 * 3600)  # three working hours later: both leads are past R7's 1h, nobody called either
    client = fast_client(portal)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    later = moment + timedelta(hours=3)
    mappings = shipped()
    modes = {"R1": Mode.ENFORCE, "R2": Mode.ENFORCE, "R3": Mode.ENFORCE, "R4": Mode.ENFORCE, "R5": Mode.ENFORCE,
             "R6": Mode.WARN, "R7": Mode.ENFORCE, "R8": Mode.WARN, "R9": Mode.WARN, "R10": Mode.ENFORCE,
             "R11": Mode.WARN}
    judged = evaluate(cache, mappings, later, modes=modes, record=False)
    r7 = {deal: [v for v in found if v.rule == "R7"] for deal, found in judged.violations.items()}
    assert r7.get(str(old_lead)) and r7.get(str(fresh_lead))  # both breach R7 (still waiting for a first contact)
    report = run(client, cache, mappings, modes, now=lambda: later)
    by_deal: dict[str, set[str]] = {}
    for action in report.to_write:
        by_deal.setdefault(action.deal, set()).update(rules_of(action))
    # the fresh lead is handed over round robin and people are told; the old one keeps its manager, nobody is told
    assert {a.kind for a in report.to_write if a.deal == str(fresh_lead) and "R7" in rules_of(a)} >= {
        ActionKind.REASSIGN, ActionKind.NOTIFY}
    assert portal.state.deals.rows[fresh_lead]["ASSIGNED_BY_ID"] in ("7", "8")
    assert not [a for a in report.to_write if a.deal == str(old_lead) and "R7" in rules_of(a)]
    assert portal.state.deals.rows[old_lead]["ASSIGNED_BY_ID"] == "6"
    # no breach of a moment long past is pushed (every seeded deal is months old), yet each is recorded
    late_rules = {"R7", "R8", "R9"}
    assert not [a for a in report.to_write if a.deal != str(fresh_lead) and rules_of(a) & late_rules]
    recorded = Counter(v.rule for found in judged.violations.values() for v in found
                       if v.rule in late_rules and v.deal != str(fresh_lead))
    # nor is a stage rule's breach on a deal won or lost more than a week before (`closed_look_back: 7d`): history
    stage_rules = {"R1", "R2", "R3", "R4", "R6"}
    history = [v for found in judged.violations.values() for v in found
               if v.rule in stage_rules and v.closed is not None and v.closed < later - timedelta(days=7)]
    assert not [a for a in report.to_write if a.deal in {v.deal for v in history} and rules_of(a) & stage_rules]
    # nor is R5's of a client postponed longer ago than its last next-contact option (3/6/9 months): no date is left
    regulation = Evaluator.of(mappings.regulation, later).regulation
    postponed_long_ago = [v for found in judged.violations.values() for v in found
                          if v.rule == "R5" and beyond_look_back(v, regulation.directions[v.direction], later)]
    assert postponed_long_ago and not [a for a in report.to_write if a.deal in {v.deal for v in postponed_long_ago}
                                       and "R5" in rules_of(a)]
    history += postponed_long_ago
    assert report.plan.old_breaches == dict(recorded + Counter(v.rule for v in history)) and recorded["R7"] >= 1
    assert Counter(v.rule for v in history)["R1"] >= 1
    # rules about the deal as it is now act on the old open deals, the old lead included (its stage task is due),
    # and R5 / R10 (the client's next contact, its segment) on closed ones too (R5 while a next-contact option is ahead)
    assert "R3" in by_deal.get(str(old_lead), set())
    state_rules = stage_rules | {"R5", "R10", "R11"}
    history_keys = {v.key for v in history}
    breached = {v.rule for found in judged.violations.values() for v in found
                if v.rule in state_rules and v.key not in history_keys}
    acted = {rule for deal, rules in by_deal.items() if deal != str(fresh_lead) for rule in rules & state_rules}
    assert len(breached) >= 6 and acted == breached, (breached, acted)
    print(f"recorded, not pushed: {dict(recorded)} and {dict(Counter(v.rule for v in history))} of long-closed deals; "
          f"acted on old deals: {sorted(acted, key=lambda r: int(r[1:]))}")


def test_a_deal_moved_back_by_its_manager_into_a_stage_whose_task_is_open_gets_no_second_task(make_portal,
                                                                                            cache) -> None:
    portal, client = synced(make_portal, cache, deals=200)
    mappings = shipped()
    modes = only(R3=Mode.ENFORCE)
    run(client, cache, mappings, modes)  # every stage task that was due is set
    titles = stage_titles(mappings)
    deal_id, deal = next((deal_id, deal) for deal_id, deal in portal.state.deals.rows.items()
                         if deal["CATEGORY_ID"] == "1" and deal["STAGE_ID"] == "C1:NEW" and deal["CLOSED"] == "N"
                         and any(t["title"] == titles["1", "C1:NEW"] and t["status"] != "5"
                                 for t in portal.state.deal_tasks(deal_id)))
    manager = int(deal["ASSIGNED_BY_ID"])
    portal.update_deal(deal_id, {"STAGE_ID": "C1:PREPARATION"}, user_id=manager)
    portal.advance(3600)
    portal.update_deal(deal_id, {"STAGE_ID": "C1:NEW"}, user_id=manager)  # back, allowed; its first task still open
    portal.advance(3600)
    later = datetime.now(UTC) + timedelta(hours=2)
    report = run(client, cache, mappings, modes, now=lambda: later)
    assert not [a for a in report.to_write if a.deal == str(deal_id)]
    assert sum(t["title"] == titles["1", "C1:NEW"] and t["status"] != "5"
               for t in portal.state.deal_tasks(deal_id)) == 1
    # and R3 is satisfied by the open task: the deal is compliant, not a breach nobody acts on
    judged = evaluate(cache, mappings, later, modes=modes, deal_ids=[deal_id], record=False)
    assert not [v for v in judged.violations.get(str(deal_id), []) if v.rule == "R3"]


def test_a_deal_won_long_ago_through_an_illegal_move_is_history_one_won_so_yesterday_is_moved_back(
        make_portal, cache, tmp_path: Path) -> None:
    # the portal starts 200 days ago and its clock is moved on to today: the three deals are that old
    portal = make_portal(deals=200, seed=3, limits=False, now=datetime.now(UTC) - timedelta(days=200))
    b2b = {"CATEGORY_ID": 1, "ASSIGNED_BY_ID": 3}
    won_long_ago = portal.add_deal({"TITLE": "Выиграна давно в обход этапов", **b2b}, user_id=3)
    open_long_ago = portal.add_deal({"TITLE": "Открыта давно, этап пропущен", **b2b}, user_id=3)
    portal.advance(3600)
    portal.update_deal(won_long_ago, {"STAGE_ID": "C1:WON"}, user_id=3)  # Won straight from the first stage: R1
    portal.update_deal(open_long_ago, {"STAGE_ID": "C1:EXECUTING"}, user_id=3)  # skips the general proposal: R1
    portal.advance(199 * 86400 - 3600)
    won_yesterday = portal.add_deal({"TITLE": "Выиграна вчера в обход этапов", **b2b}, user_id=3)
    portal.advance(600)
    portal.update_deal(won_yesterday, {"STAGE_ID": "C1:WON"}, user_id=3)
    portal.advance(86400 - 600)  # the portal's clock is today's again
    client = fast_client(portal)
    Syncer(Bitrix24Reader(client), cache).run(full=True)
    mappings = shipped()
    modes = only(R1=Mode.ENFORCE, R2=Mode.ENFORCE, R3=Mode.ENFORCE, R4=Mode.ENFORCE, R6=Mode.WARN)
    judged = evaluate(cache, mappings, datetime.now(UTC), modes=modes, record=False)
    assert "R1" in {v.rule for v in judged.violations[str(won_long_ago)]}  # a breach all the same: recorded
    report = run(client, cache, mappings, modes)
    by_deal: dict[str, set[ActionKind]] = {}
    for action in report.to_write:
        by_deal.setdefault(action.deal, set()).add(action.kind)
    # won 200 days ago: history. Not reopened, nobody tasked or told
    assert str(won_long_ago) not in by_deal and portal.state.deals.rows[won_long_ago]["STAGE_ID"] == "C1:WON"
    assert report.plan.old_breaches.get("R1", 0) >= 1
    # won the same way yesterday: moved back, its manager told; the open deal is moved back however old its move
    for deal_id in (won_yesterday, open_long_ago):
        assert {ActionKind.REVERT_STAGE, ActionKind.NOTIFY} <= by_deal.get(str(deal_id), set()), deal_id
        assert portal.state.deals.rows[deal_id]["STAGE_ID"] == "C1:NEW", deal_id
    # `audit` shows the old one as older than look-back, in the list, the counts and the deal's explanation
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({"CRMBRIDGE_CACHE_PATH": str(cache.path), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS)})
    audit = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--json", "--no-record"], cwd=tmp_path,
                           env=environment, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    shown = json.loads(audit.stdout)
    old_r1 = [item for item in shown["open"] if item["deal"] == str(won_long_ago) and item["rule"] == "R1"]
    assert old_r1 and all(item["beyond_look_back"] for item in old_r1) and shown["beyond_look_back"]["R1"] >= 1
    assert not [item for item in shown["open"] if item["deal"] == str(open_long_ago) and item["beyond_look_back"]
                and item["rule"] in ("R1", "R2", "R3", "R4", "R6")]
    told = subprocess.run([sys.executable, "-m", "crmbridge", "audit", "--deal", str(won_long_ago)], cwd=tmp_path,
                          env={**environment, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    assert told.returncode == 0, told.stderr
    r1_line = next(line for line in told.stdout.splitlines() if line.lstrip("│ ").startswith("R1 "))
    assert "*" in r1_line and "closed_look_back" in told.stdout, told.stdout
