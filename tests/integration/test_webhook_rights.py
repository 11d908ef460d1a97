"""The webhook's rights (issue 7, item 13): reads run as the webhook's user; a non-admin sees only the tasks it takes
part in, so enforcement is refused with one clear line, and `check --live` says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.sandbox import SandboxPortal

pytestmark = pytest.mark.integration

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
WRITES = ("tasks.task.add", "crm.deal.update", "crm.timeline.comment.add", "im.notify.system.add", "im.message.add",
          "crm.activity.todo.add")


def cli(tmp_path: Path, portal: SandboxPortal, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update({"CRMBRIDGE_CACHE_PATH": str(tmp_path / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS),
                "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "CRMBRIDGE_BITRIX24_RATE": "1000",
                "CRMBRIDGE_BITRIX24_BURST": "1000", **extra})
    return subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def manager_webhook() -> Iterator[SandboxPortal]:
    """A portal whose inbound webhook was created by a manager (user 3), not the administrator."""
    sandbox = SandboxPortal(deals=150, seed=5, limits=False, webhook_user=3)
    sandbox.start(port=0)
    yield sandbox
    sandbox.stop()


def writes(portal: SandboxPortal) -> int:
    return sum(portal.stats.calls.get(method, 0) for method in WRITES)


def test_the_sandbox_answers_user_admin_and_lists_a_managers_tasks_only(
        make_portal: Callable[..., SandboxPortal]) -> None:
    admin = make_portal(deals=150, seed=5, limits=False)
    manager = make_portal(deals=150, seed=5, limits=False, webhook_user=3)
    seen = {}
    for name, portal in (("admin", admin), ("manager", manager)):
        client = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)
        seen[name] = (client.call("user.admin").result,
                      {int(row["id"]) for row in client.iter_list_fast("tasks.task.list", select=["ID", "RESPONSIBLE_ID",
                                                                                                   "CREATED_BY"],
                                                                       result_key="tasks")})
    assert seen["admin"][0] is True and seen["manager"][0] is False
    assert seen["admin"][1] == set(admin.state.tasks.rows)
    assert 0 < len(seen["manager"][1]) < len(seen["admin"][1])
    assert seen["manager"][1] == set(manager.state.tasks_visible_to(3))


def test_enforce_is_refused_when_the_webhooks_user_is_not_an_admin(tmp_path: Path,
                                                                    manager_webhook: SandboxPortal) -> None:
    assert cli(tmp_path, manager_webhook, "sync", "--json").returncode == 0
    with open_cache(tmp_path / "cache.db") as cache:
        assert cache.account.rights() is False  # the sync asked user.admin and kept the answer
    before = writes(manager_webhook)
    refused = cli(tmp_path, manager_webhook, "enforce", "--mode", "R3=enforce")
    assert refused.returncode != 0
    assert "not a Bitrix24 administrator" in refused.stderr and "enforcement is refused" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert writes(manager_webhook) == before  # nothing was written
    # a dry run only shows the plan; the admin may also accept a user whose role sees everything
    assert cli(tmp_path, manager_webhook, "enforce", "--dry-run", "--json").returncode == 0
    allowed = cli(tmp_path, manager_webhook, "enforce", "--json", CRMBRIDGE_ENFORCE_ALLOW_NON_ADMIN="true")
    assert allowed.returncode == 0, allowed.stderr
    assert writes(manager_webhook) > before


def test_enforce_without_a_sync_asks_the_portal_when_the_cache_does_not_know(tmp_path: Path,
                                                                            manager_webhook: SandboxPortal) -> None:
    assert cli(tmp_path, manager_webhook, "sync", "--json").returncode == 0
    with open_cache(tmp_path / "cache.db") as cache, cache.atomic():
        cache.db.execute("UPDATE crm_account SET webhook_admin = NULL")  # a cache written before the check existed
    refused = cli(tmp_path, manager_webhook, "enforce", "--no-sync")
    assert refused.returncode != 0 and "not a Bitrix24 administrator" in refused.stderr


def test_check_live_says_the_webhooks_user_is_too_narrow(tmp_path: Path, manager_webhook: SandboxPortal,
                                                         make_portal: Callable[..., SandboxPortal]) -> None:
    checked = cli(tmp_path, manager_webhook, "check", "--live")
    assert checked.returncode == 0, checked.stderr
    assert "not a Bitrix24 administrator" in " ".join(checked.stdout.split())
    assert json.loads(cli(tmp_path, manager_webhook, "check", "--live", "--json").stdout)["webhook_admin"] is False
    admin = make_portal(deals=50, seed=5, limits=False)
    fine = cli(tmp_path / "admin", admin, "check", "--live", "--json") if (tmp_path / "admin").mkdir() is None else None
    assert fine is not None and fine.returncode == 0 and json.loads(fine.stdout)["webhook_admin"] is True
