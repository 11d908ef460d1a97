"""Benchmark: full sync of a big sandbox portal under real limits, against fast_bitrix24 and b24pysdk.

The sandbox runs in its own process (so peak RSS is crmbridge's alone) with the portal's limits:
2 req/s, burst 50, 100 ms latency, 480 s of operating time per method per 10 minutes and a COUNT
that costs ~21 µs per matched row. Reported: HTTP requests (target <= deals/2,500 + 10 for the deal
list), wall time, operating seconds consumed, rows/s, peak RSS, and the same job (read every deal)
done by fast_bitrix24's get_all and by b24pysdk's as_list_fast, as ratios.

    .venv/bin/python bench/bench_sync.py --deals 50000
    .venv/bin/python bench/bench_sync.py --deals 500000 --time-scale 0.1 --jobs crmbridge-deals

`--time-scale K` multiplies the operating-time window (600 s), its budget (480 s) and every simulated
cost by K: the same pacing problem, watched in K times the real time (a 500,000-deal portal needs
about 30 minutes of real time at K = 1, whatever the client does: 1,500 s of method time at
480 s per 600 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def serve(options: dict[str, Any], ready: Any, stop: Any, stats_out: Any) -> None:
    from crmbridge.sandbox import SandboxPortal

    portal = SandboxPortal(**options)
    portal.start(port=0)
    ready.put(portal.webhook_url)
    stop.wait()
    stats_out.put(portal.stats.snapshot())
    portal.stop()


class SandboxProcess:
    """The sandbox portal in a child process; stats are collected when it stops."""

    def __init__(self, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.stats_out, self.stop_event = context.Queue(), context.Queue(), context.Event()
        self.process = context.Process(target=serve, args=(options, self.ready, self.stop_event, self.stats_out))

    def __enter__(self) -> str:
        self.process.start()
        return str(self.ready.get(timeout=600))

    def stats(self) -> dict[str, Any]:
        self.stop_event.set()
        stats = self.stats_out.get(timeout=60)
        self.process.join(timeout=30)
        return stats

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self.stop_event.set()
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_crmbridge(url: str, args: argparse.Namespace, deals_only: bool) -> dict[str, Any]:
    from crmbridge.cache.store import open_cache
    from crmbridge.connectors.bitrix24.client import Bitrix24Client
    from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
    from crmbridge.sync import Syncer

    # each run gets a sandbox just started: its bucket is empty (a client knowing nothing would assume it full)
    client = Bitrix24Client(url, rate=args.rate, burst=args.burst, operating_limit=args.operating_limit,
                            bucket_level=0.0)
    started = time.monotonic()
    if deals_only:
        rows = sum(1 for _ in Bitrix24Reader(client).iter_deals())
        return {"rows": rows, "requests": client.requests_made, "seconds": time.monotonic() - started}
    with tempfile.TemporaryDirectory() as tmp:
        cache = open_cache(Path(tmp) / "bench.db")
        summary = Syncer(Bitrix24Reader(client), cache).run(full=True)
        # issue 7, item 16: each client read once per sync (rows served per client cached)
        clients = {"contacts_cached": cache.count("contacts"), "companies_cached": cache.count("companies")}
        cache.close()
    return {"rows": summary.deals_read, "requests": summary.http_requests, "seconds": time.monotonic() - started,
            "summary": summary.as_dict(), "clients": clients}


def run_fast_bitrix24(url: str) -> dict[str, Any]:
    from fast_bitrix24 import Bitrix

    bitrix = Bitrix(url, ssl=False, verbose=False)
    started = time.monotonic()
    try:
        rows = len(bitrix.get_all("crm.deal.list", params={"select": ["*", "UF_*"]}))
        error = None
    except Exception as exc:  # the peer's own failure is a result worth reporting
        rows, error = 0, f"{type(exc).__name__}: {exc}"[:200]
    return {"rows": rows, "seconds": time.monotonic() - started, "error": error}


def run_b24pysdk(url: str) -> dict[str, Any]:
    import importlib
    from urllib.parse import urlsplit

    import b24pysdk

    # b24pysdk only builds https://{domain}/rest; the sandbox is plain http on loopback
    call_method = importlib.import_module("b24pysdk.api.callers.call_method")
    call_method._MethodCaller._base_url = property(lambda self: f"http://{self._domain}/rest")
    parts = urlsplit(url)
    _, user, code = parts.path.strip("/").split("/")[:3]
    client = b24pysdk.Client(b24pysdk.BitrixWebhook(domain=parts.netloc, webhook_token=f"{user}/{code}"))
    started = time.monotonic()
    try:
        rows = sum(1 for _ in client.crm.deal.list(select=["*", "UF_*"]).as_list_fast().result)
        error = None
    except Exception as exc:
        rows, error = 0, f"{type(exc).__name__}: {exc}"[:200]
    return {"rows": rows, "seconds": time.monotonic() - started, "error": error}


JOBS = ["crmbridge-deals", "crmbridge", "fast_bitrix24", "b24pysdk"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=JOBS)
    parser.add_argument("--only", choices=JOBS, help=argparse.SUPPRESS)  # one job, in a child process
    args = parser.parse_args()
    args.window_seconds = 600.0 * args.time_scale
    args.operating_limit = 480.0 * args.time_scale
    portal_options = dict(
        deals=args.deals, seed=1, latency_ms=args.latency_ms, rate=args.rate, burst=args.burst,
        operating_limit=args.operating_limit, window_seconds=args.window_seconds,
        count_cost_per_row=49.9 / 2_387_743 * args.time_scale, page_cost=0.05 * args.time_scale,
        row_cost=0.002 * args.time_scale, limits=True,
    )
    if not args.only:
        # each job in its own process, so peak RSS is that job's alone
        results = {}
        for job in args.jobs:
            command = [sys.executable, __file__, "--only", job] + [
                f"--deals={args.deals}", f"--rate={args.rate}", f"--burst={args.burst}",
                f"--latency-ms={args.latency_ms}", f"--time-scale={args.time_scale}",
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
            results[job] = json.loads(lines[-1]) if lines else {"error": output.stderr[-500:]}
        print_report(results, args)
        return
    job = args.only
    sandbox = SandboxProcess(**portal_options)
    with sandbox as url:
        if job == "crmbridge":
            result = run_crmbridge(url, args, deals_only=False)
        elif job == "crmbridge-deals":
            result = run_crmbridge(url, args, deals_only=True)
        elif job == "fast_bitrix24":
            result = run_fast_bitrix24(url)
        else:
            result = run_b24pysdk(url)
        result["portal"] = sandbox.stats()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result, default=str))


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    floor = args.deals / 2500 + 10
    print(f"Full read of {args.deals:,} deals; {args.rate}/s, burst {args.burst}, {args.latency_ms} ms latency, "
          f"{args.operating_limit:.0f} s operating per {args.window_seconds:.0f} s window")
    base = results.get("crmbridge-deals", {})
    for job, result in results.items():
        portal = result.get("portal", {})
        requests = portal.get("requests_total", result.get("requests"))
        seconds = result.get("seconds") or 0
        rows = result.get("rows") or 0
        line = (f"{job:16} rows={rows:>8,} requests={requests} seconds={seconds:8.1f} "
                f"rows/s={rows / seconds if seconds else 0:9.0f} operating={portal.get('operating_total', 0):7.1f} s "
                f"429s={portal.get('operation_time_limit', 0)} 503s={portal.get('query_limit_exceeded', 0)} "
                f"rss={result.get('peak_rss_mb')} MB")
        if result.get("error"):
            line += f" error={result['error']}"
        if result.get("clients"):
            served = portal.get("rows", {})
            line += (f" contact rows={served.get('crm.contact.list', 0):,} for {result['clients']['contacts_cached']:,}"
                     f" contacts, company rows={served.get('crm.company.list', 0):,} for "
                     f"{result['clients']['companies_cached']:,} companies")
        if job != "crmbridge-deals" and base.get("seconds") and seconds:
            line += f" time-ratio={seconds / base['seconds']:.2f}x"
        print(line)
    print(f"request floor for the deal list: {floor:.0f}")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
