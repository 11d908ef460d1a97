"""Benchmark: crmbridge on the sandbox amoCRM account under its real limit (7 requests per second, 429 beyond).

Reported, as ratios to their floors:

* full sync of N leads: HTTP requests against the request floor (leads, contacts, companies and tasks
  at 250 per page, the events feed at 100, plus the 4 metadata requests), wall time against that floor
  at 7 requests per second, the most requests the account admitted in any one second, 429s;
* an incremental sync after 3 edits: HTTP requests (target <= 3);
* enforcement of A actions: HTTP requests for the writes against A/50 + 5;
* evaluation: R1..R11 over the same seeded deals loaded from a Bitrix24 cache and from an amoCRM cache
  (same violations, evaluation time ratio; target: identical cost).

The account runs in its own process, so the figures are crmbridge's alone.

    .venv/bin/python bench/bench_amocrm.py --deals 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def serve(options: dict[str, Any], ready: Any, commands: Any, answers: Any) -> None:
    from crmbridge.sandbox.amocrm import SandboxAccount

    account = SandboxAccount(**options)
    account.start(port=0)
    with account.state.lock:
        counts = {"leads": len(account.state.leads), "contacts": len(account.state.contacts),
                  "companies": len(account.state.companies),
                  "tasks": sum(1 for t in account.state.tasks.values() if t["entity_type"] == "leads"),
                  "events": sum(1 for e in account.state.events if e["type"] in ("lead_status_changed", "lead_deleted",
                                                                                 "lead_restored"))}
    ready.put((account.base_url, counts))
    while True:
        command, argument = commands.get()
        if command == "stop":
            answers.put(account.stats.snapshot())
            account.stop()
            return
        if command == "edit":
            for lead_id in argument:
                account.update_lead(lead_id, {"name": f"edited {lead_id}", "price": 777})
            answers.put(True)
        elif command == "stats":
            answers.put(account.stats.snapshot())


class AccountProcess:
    def __init__(self, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.commands, self.answers = context.Queue(), context.Queue(), context.Queue()
        self.process = context.Process(target=serve, args=(options, self.ready, self.commands, self.answers))

    def start(self) -> tuple[str, dict[str, int]]:
        self.process.start()
        return self.ready.get(timeout=1800)

    def ask(self, command: str, argument: Any = None) -> Any:
        self.commands.put((command, argument))
        return self.answers.get(timeout=600)

    def stop(self) -> dict[str, Any]:
        stats = self.ask("stop")
        self.process.join(timeout=60)
        return stats


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def sync_and_enforce(deals: int, seed: int, workdir: Path) -> dict[str, Any]:
    from crmbridge.cache.store import open_cache
    from crmbridge.connectors.amocrm.client import AmoCRMClient
    from crmbridge.connectors.amocrm.limiter import RateWindow
    from crmbridge.connectors.amocrm.transport import LongLivedTokenAuth
    from crmbridge.connectors.registry import syncer_for
    from crmbridge.enforce.run import enforce
    from crmbridge.mapping.load import load_mappings
    from crmbridge.model import Mode
    from crmbridge.sandbox.amocrm import catalog as amo

    account = AccountProcess(deals=deals, seed=seed)
    seeded = time.perf_counter()
    base_url, counts = account.start()
    seeded = time.perf_counter() - seeded
    client = AmoCRMClient(base_url, auth=LongLivedTokenAuth(amo.LONG_LIVED_TOKEN), limiter=RateWindow(7))
    cache = open_cache(workdir / "amocrm.db")
    result: dict[str, Any] = {"deals": deals, "seeded_seconds": round(seeded, 1), "counts": counts}
    try:
        started = time.perf_counter()
        full = syncer_for(client, cache).run(full=True)
        seconds = time.perf_counter() - started
        floor = (sum(ceil_div(counts[name], 250) for name in ("leads", "contacts", "companies", "tasks"))
                 + ceil_div(counts["events"], 100) + 4)
        stats = account.ask("stats")
        result["full_sync"] = {
            "http_requests": full.http_requests, "request_floor": floor,
            "requests_ratio": round(full.http_requests / floor, 3),
            "seconds": round(seconds, 1), "time_floor_seconds": round(floor / 7, 1),
            "time_ratio": round(seconds / (floor / 7), 3),
            "peak_requests_per_second": stats["peak_per_second"], "429": stats["rate_limited"],
            "403_blocked": stats["blocked"], "rows": {"leads": full.deals_read, "stage_changes": full.stage_history_read,
                                                      "tasks": full.tasks_read, "contacts": full.contacts_read,
                                                      "companies": full.companies_read},
        }
        account.ask("edit", [17, deals // 2, deals - 1])
        incremental = syncer_for(client, cache).run()
        # the seed stamps every record whose change would lie in the future one minute before "now": right
        # after seeding, the default 5-minute overlap re-reads that burst (more than a page of leads and tasks).
        # A quiet account's steady state: the same 3 edits with the burst outside the overlap (1 minute).
        syncer_for(client, cache, overlap=timedelta(minutes=1)).run()
        account.ask("edit", [18, deals // 2 + 1, deals - 2])
        steady = syncer_for(client, cache, overlap=timedelta(minutes=1)).run()
        result["incremental_after_3_edits"] = {
            "right_after_full_sync_5min_overlap": {"http_requests": incremental.http_requests,
                                                   "deals_read": incremental.deals_read,
                                                   "tasks_read": incremental.tasks_read,
                                                   "deals_changed": incremental.deals_changed},
            "steady_state": {"http_requests": steady.http_requests, "deals_changed": steady.deals_changed},
            "target": 3}
        modes = {rule: Mode.ENFORCE for rule in ("R1", "R2", "R3", "R4", "R5", "R7")}
        mappings = load_mappings(ROOT / "mappings", crm="amocrm")
        started = time.perf_counter()
        report = enforce(client, cache, mappings, modes=modes, sync=False)
        execution = report.execution
        assert execution is not None
        actions = len(report.to_write)
        result["enforce"] = {"actions": actions, "http_requests": execution.http_requests,
                             "bound": round(actions / 50 + 5, 1), "done": execution.done, "failed": execution.failed,
                             "seconds": round(time.perf_counter() - started, 1),
                             "by_kind": execution.done_by_kind}
        again = enforce(client, cache, mappings, modes=modes, sync=False)
        result["enforce"]["second_run_writes"] = again.execution.sent if again.execution else 0
    finally:
        cache.close()
        stats = account.stop()
    result["account"] = {"requests": stats["requests"], "peak_requests_per_second": stats["peak_per_second"],
                         "429": stats["rate_limited"]}
    return result


def evaluation(deals: int, seed: int, workdir: Path, rounds: int = 7) -> dict[str, Any]:
    """The same seeded deals from a Bitrix24 cache and an amoCRM cache: same violations, same evaluation cost."""
    from datetime import datetime, timezone

    from crmbridge.bulk import paused_gc
    from crmbridge.cache.store import open_cache
    from crmbridge.mapping.binding import DealMapper
    from crmbridge.mapping.load import load_mappings
    from crmbridge.regulation.evaluate import Evaluator
    from crmbridge.sandbox.amocrm.state import seeded_state
    from crmbridge.sandbox.seed import seed_portal
    from crmbridge.sandbox.state import PortalState

    now = 1795000000.0
    stamp = "2026-11-17T00:00:00+00:00"
    portal = PortalState(clock=lambda: now)
    seed_portal(portal, deals=deals, seed=seed, now=now)
    account = seeded_state(deals=deals, seed=seed, now=now)
    out: dict[str, Any] = {"deals": deals}
    loaded: dict[str, Any] = {}
    for crm, tables in (("bitrix24", portal.cache_rows(stamp)), ("amocrm", account.cache_rows(stamp))):
        cache = open_cache(workdir / f"eval-{crm}.db")
        with cache.atomic():
            for table, table_rows in tables.items():
                cache.upsert(table, table_rows)
        mappings = load_mappings(ROOT / "mappings", crm=crm)
        started = time.perf_counter()
        loaded[crm] = (DealMapper(mappings.regulation, mappings.binding).deals(cache.deals.records()), mappings)
        out[crm] = {"load_and_map_seconds": round(time.perf_counter() - started, 2)}
        cache.close()
    moment = datetime.fromtimestamp(now, timezone.utc)
    found: dict[str, dict[str, list[tuple[str, Any]]]] = {}
    best = {crm: float("inf") for crm in loaded}

    def evaluate(deals_loaded: list[Any], mappings: Any) -> dict[str, list[tuple[str, Any]]]:
        evaluator = Evaluator.of(mappings.regulation, moment, deals_for_purchases=deals_loaded)
        return {deal.id: sorted((v.rule, v.stage) for v in evaluator.violations(deal)) for deal in deals_loaded}

    for _ in range(rounds):  # alternately, so both meet the same machine load
        for crm, (deals_loaded, mappings) in loaded.items():
            gc.collect()
            with paused_gc():
                started = time.process_time()
                found[crm] = evaluate(deals_loaded, mappings)
                best[crm] = min(best[crm], time.process_time() - started)
    calls: dict[str, int] = {}
    for crm, (deals_loaded, mappings) in loaded.items():  # a load-independent cost: Python and C calls made
        counter = [0]

        def count(frame: Any, event: str, arg: Any, counter: list[int] = counter) -> None:
            if event in ("call", "c_call"):
                counter[0] += 1

        sys.setprofile(count)
        try:
            evaluate(deals_loaded, mappings)
        finally:
            sys.setprofile(None)
        calls[crm] = counter[0]
    for crm in loaded:
        out[crm].update({"evaluate_cpu_seconds": round(best[crm], 3), "calls": calls[crm],
                         "violations": sum(len(v) for v in found[crm].values())})
    out["same_violations"] = found["bitrix24"] == found["amocrm"]
    out["evaluate_ratio_amocrm_to_bitrix24"] = round(out["amocrm"]["evaluate_cpu_seconds"] /
                                                     out["bitrix24"]["evaluate_cpu_seconds"], 3)
    out["calls_ratio_amocrm_to_bitrix24"] = round(calls["amocrm"] / calls["bitrix24"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-sync", action="store_true", help="Only the evaluation comparison.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        result: dict[str, Any] = {}
        if not args.skip_sync:
            result.update(sync_and_enforce(args.deals, args.seed, workdir))
            print(json.dumps(result, ensure_ascii=False), file=sys.stderr, flush=True)
        result["evaluation"] = evaluation(args.deals, args.seed, workdir)
    print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
