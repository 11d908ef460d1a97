"""The enforcement part of `crmbridge demo`: show the plan, enforce it on the sandbox, show what changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

from crmbridge.cache.store import Cache
from crmbridge.commands import common
from crmbridge.commands.enforce import print_report
from crmbridge.connectors.registry import CrmClient
from crmbridge.enforce.run import EnforceReport, enforce
from crmbridge.mapping.load import Mappings
from crmbridge.model import Mode

#: the shipped regulation has R1..R3 in `warn`; the demo turns them to `enforce` so stage reverts show too
DEMO_MODES: Mapping[str, Mode] = {"R1": Mode.ENFORCE, "R2": Mode.ENFORCE, "R3": Mode.ENFORCE}


def run_demo_enforcement(client: CrmClient, cache: Cache, mappings: Mappings, *,
                         modes: Mapping[str, Mode] | None = DEMO_MODES, limit: int = 15) -> tuple[EnforceReport, EnforceReport]:
    """Dry run (the plan), then the real run and a second one that must write nothing; returns both reports.

    The cache must hold a synced portal (the demo's full sync); each run syncs incrementally itself.
    """
    console = common.console
    if modes:
        shown = ", ".join(f"{rule}={mode.value}" for rule, mode in modes.items())
        console.print(f"[bold]Enforcement[/bold] (demo modes: {shown}; the shipped regulation has them in warn)")
    # the shipped regulation holds messages outside working hours; the demo shows its digests at any hour
    data = mappings.regulation.model_dump()
    data["notifications"]["outside_working_hours"] = "send"
    mappings = replace(mappings, regulation=type(mappings.regulation).model_validate(data))
    plan = enforce(client, cache, mappings, dry_run=True, modes=modes)
    print_report(plan, limit=limit)
    console.print("[bold]Enforcing on the sandbox…[/bold]")
    report = enforce(client, cache, mappings, modes=modes)
    print_report(report, limit=0)
    again = enforce(client, cache, mappings, modes=modes)
    sent = again.execution.sent if again.execution else 0
    console.print(f"Second run: {sent} writes (each action is written once; `crmbridge log` shows them all)")
    digest = next((row for row in cache.query("SELECT payload FROM actions WHERE kind = 'message' AND status = 'done' "
                                              "AND idempotency_key LIKE 'message:%' ORDER BY id LIMIT 1")), None)
    if digest is not None:
        text = str(json.loads(digest["payload"]).get("MESSAGE") or "")
        console.print("[bold]A manager's digest[/bold] (one message per person per run):")
        console.print(text if len(text) < 1500 else text[:1500] + " …", markup=False)
    return report, again
