"""The monthly KPI message against the sandbox portal: one message per person and period through the enforcement
executor, nothing more on a second run, nothing outside working hours (issue 10, optional push)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crmbridge.cache.store import Cache
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.kpi.periods import last_full_month
from crmbridge.kpi.push_run import push_month
from crmbridge.kpi.service import open_session
from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox import catalog as c
from crmbridge.sync import Syncer
from tests.integration.enforce_kit import assert_each_lands_once, fast_client, working_moment, writes

pytestmark = pytest.mark.integration
MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def received(portal: SandboxPortal) -> Counter[int]:
    """Messages per person (the webhook's user 1 writes to each person's private dialog)."""
    with portal.state.lock:
        return Counter(next((user for user in message["_pair"] if user != 1), 1) for message in portal.state.messages)


def synced(make_portal, cache: Cache):  # noqa: ANN001, ANN202
    portal = make_portal(deals=300, seed=5, limits=False)
    client = fast_client(portal)
    Syncer(Bitrix24Reader(client), cache, plan_entity_type=c.PLANS_ENTITY_TYPE_ID).run(full=True)
    return portal, client


def test_one_message_per_person_and_period_and_a_second_run_writes_nothing(make_portal, cache: Cache) -> None:
    portal, client = synced(make_portal, cache)
    moment = working_moment()
    period = last_full_month(moment.astimezone(ZoneInfo("Europe/Moscow")).date())
    first = push_month(client, cache, open_session(cache, MAPPINGS, moment), period, now=lambda: moment,
                       sleep=lambda seconds: None)
    assert first.execution is not None and first.execution.done == first.composed >= 3
    per_person = received(portal)
    assert sorted(per_person) == sorted(int(user) for user in first.recipients)
    assert all(count == 1 for count in per_person.values())
    table = [m["text"] for m in portal.state.messages if m["text"].startswith("[b]crmbridge: план и факт менеджеров")]
    assert len(table) == 1 and "[b]Итого[/b]" in table[0]  # the head of sales (user 1): the managers' table
    mine = [m["text"] for m in portal.state.messages if m["text"].startswith(f"[b]crmbridge: ваш план и факт за {period}")]
    assert len(mine) == first.composed - 1 and all("• Выручка: " in text for text in mine)
    assert cache.count("actions", "idempotency_key LIKE 'kpi%' AND status = 'done'") == first.composed
    before = writes(portal)
    # a second run (the job fires on each of the first days of the month), over figures read afresh: nothing more
    second = push_month(client, cache, open_session(cache, MAPPINGS, moment), period, now=lambda: moment,
                        sleep=lambda seconds: None)
    assert second.composed == 0 and second.already_sent == first.composed
    assert second.execution is not None and second.execution.sent == 0
    assert writes(portal) == before and received(portal) == per_person
    assert_each_lands_once(portal, cache)


def test_nothing_goes_out_at_night_and_the_morning_run_sends(make_portal, cache: Cache) -> None:
    portal, client = synced(make_portal, cache)
    night = working_moment(hour=22)
    period = last_full_month(night.astimezone(ZoneInfo("Europe/Moscow")).date())
    held = push_month(client, cache, open_session(cache, MAPPINGS, night), period, now=lambda: night,
                      sleep=lambda seconds: None)
    assert held.composed == 0 and held.held.get("working_hours", 0) >= 3 and portal.state.messages == []
    morning = working_moment(hour=10, after=night)
    sent = push_month(client, cache, open_session(cache, MAPPINGS, morning), period, now=lambda: morning,
                      sleep=lambda seconds: None)
    assert sent.composed == held.held["working_hours"] and len(portal.state.messages) == sent.composed


def test_a_dry_run_shows_the_messages_and_writes_nothing(make_portal, cache: Cache) -> None:
    portal, client = synced(make_portal, cache)
    moment = working_moment()
    period = last_full_month(moment.astimezone(ZoneInfo("Europe/Moscow")).date())
    report = push_month(client, cache, open_session(cache, MAPPINGS, moment), period, now=lambda: moment,
                        dry_run=True)
    assert report.composed >= 3 and report.execution is None and len(report.texts) == report.composed
    assert writes(portal) == 0 and cache.count("actions", "idempotency_key LIKE 'kpi%'") == 0


def test_the_command_and_the_job_send_once(make_portal, cache: Cache, tmp_path: Path) -> None:
    import json
    import os
    import shutil
    import subprocess
    import sys

    portal, _ = synced(make_portal, cache)
    cache.close()
    shutil.copytree(MAPPINGS, tmp_path / "mappings")
    shutil.copytree(MAPPINGS.parent / "jobs", tmp_path / "jobs")
    regulation = tmp_path / "mappings" / "regulation.yaml"  # the test runs at any hour
    regulation.write_text(regulation.read_text(encoding="utf-8").replace("outside_working_hours: hold",
                                                                         "outside_working_hours: send"), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update({"CRMBRIDGE_CACHE_PATH": str(cache.path), "CRMBRIDGE_MAPPINGS_DIR": str(tmp_path / "mappings"),
                        "CRMBRIDGE_JOBS_DIR": str(tmp_path / "jobs"), "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "COLUMNS": "200"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=180)

    dry = cli("kpi", "push", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "[b]crmbridge: ваш план и факт за" in dry.stdout and writes(portal) == 0
    first = cli("kpi", "push", "--json")
    assert first.returncode == 0, first.stderr
    sent = json.loads(first.stdout)
    assert sent["composed"] >= 3 and sent["execution"]["done"] == sent["composed"] == len(portal.state.messages)
    listed = cli("jobs", "list")
    assert listed.returncode == 0 and "kpi push" in listed.stdout and "0 10 1-7 * *" in listed.stdout
    job = cli("jobs", "run", "kpi-push", "--json")  # the month's later runs: nothing more
    assert job.returncode == 0, job.stderr
    summary = json.loads(job.stdout)["summary"]
    assert summary["composed"] == 0 and summary["already_sent"] == sent["composed"]
    assert len(portal.state.messages) == sent["composed"]
