"""Benchmark: enforcing 5,000 actions on the sandbox portal under its real limits; target <= 5,000/50 + 10 requests.

A sandbox portal is seeded and synced (setup, not measured), the regulation is evaluated with every
correcting rule in `enforce` mode, and the first `--actions` planned actions are written by the
Executor: intents, batches of 50, results. Reported: HTTP requests of the write phase against the
bound (actions / 50 + 10), batches, wall time, actions per second, the portal's own request count,
and a second execution of the same actions (must send nothing).

    .venv/bin/python bench/bench_enforce.py                 # 5,000 actions, real limits (2 req/s, burst 50)
    .venv/bin/python bench/bench_enforce.py --no-limits --faults 0.2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from crmbridge.cache import open_cache  # noqa: E402
from crmbridge.connectors.bitrix24.client import MAX_BATCH, Bitrix24Client  # noqa: E402
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader  # noqa: E402
from crmbridge.enforce.audit import AuditLog  # noqa: E402
from crmbridge.enforce.execute import Executor  # noqa: E402
from crmbridge.enforce.run import enforce  # noqa: E402
from crmbridge.mapping.load import load_mappings  # noqa: E402
from crmbridge.model import Mode  # noqa: E402
from crmbridge.sandbox import SandboxPortal  # noqa: E402
from crmbridge.sync import Syncer  # noqa: E402

MODES = {rule: Mode.ENFORCE for rule in ("R1", "R2", "R3", "R4", "R5", "R7", "R10")} | {
    rule: Mode.WARN for rule in ("R6", "R8", "R9", "R11")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=5000)
    parser.add_argument("--deals", type=int, default=7000, help="sandbox deals (enough to plan --actions)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-limits", action="store_true", help="turn off the portal's bucket and operating limits")
    parser.add_argument("--faults", type=float, default=0.0, help="share of requests that fail during the write phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    portal = SandboxPortal(deals=args.deals, seed=args.seed, limits=False)
    portal.start(port=0)
    try:
        with tempfile.TemporaryDirectory() as directory:
            cache = open_cache(Path(directory) / "bench.db")
            setup = Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)
            Syncer(Bitrix24Reader(setup), cache).run(full=True)
            plan = enforce(setup, cache, load_mappings(ROOT / "mappings"), dry_run=True, sync=False, modes=MODES)
            actions = plan.to_write[: args.actions]
            if len(actions) < args.actions:
                print(f"only {len(actions)} actions planned from {args.deals} deals; raise --deals", file=sys.stderr)
                return 2

            portal.limits = not args.no_limits
            portal.faults = args.faults
            # the client paces itself like the portal: 2 req/s, burst 50 (unpaced when the portal has no limits)
            pace = {"rate": 1000.0, "burst": 1000} if args.no_limits else {}
            # the portal's bucket was off until now, so it is empty (a client knowing nothing would assume it full)
            client = Bitrix24Client(portal.webhook_url, backoff_initial=0.05, backoff_max=1.0, bucket_level=0.0, **pace)
            served_before = portal.stats.requests
            started = time.perf_counter()
            summary = Executor(client, AuditLog(cache)).execute(actions)
            seconds = time.perf_counter() - started
            served = portal.stats.requests - served_before
            portal.faults = 0.0
            again = Executor(client, AuditLog(cache)).execute(actions)
            bound = len(actions) // MAX_BATCH + 10
            result = {
                "actions": len(actions), "by_kind": summary.done_by_kind, "done": summary.done,
                "failed": summary.failed, "unknown": summary.unknown,
                "found_after_lost_answer": summary.found_after_lost_answer,
                "http_requests": summary.http_requests, "bound": bound, "within_bound": summary.http_requests <= bound,
                "batches": summary.batches, "portal_requests_served": served, "seconds": round(seconds, 2),
                "actions_per_second": round(len(actions) / seconds, 1), "limits": not args.no_limits,
                "faults": args.faults, "second_run_requests": again.http_requests, "second_run_sent": again.sent,
                "portal_faults": portal.stats.faults,
            }
            cache.close()
    finally:
        portal.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"enforced {result['actions']:,} actions ({', '.join(f'{k} {v}' for k, v in result['by_kind'].items())})")
        print(f"  HTTP requests {result['http_requests']} (bound {bound}: {'ok' if result['within_bound'] else 'OVER'}), "
              f"{result['batches']} batches, {result['seconds']} s, {result['actions_per_second']} actions/s, "
              f"limits {'on' if result['limits'] else 'off'}, faults {args.faults:.0%}")
        print(f"  done {result['done']}, failed {result['failed']}, unknown {result['unknown']}, "
              f"found after a lost answer {result['found_after_lost_answer']}")
        print(f"  second run of the same actions: {result['second_run_sent']} sent, "
              f"{result['second_run_requests']} HTTP requests")
    return 0 if result["within_bound"] or args.faults else 1


if __name__ == "__main__":
    sys.exit(main())
