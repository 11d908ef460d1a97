"""Prometheus metrics of the daemon: counters kept in memory, backlog and compliance gauges read from the cache at scrape."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crmbridge.live.inbox import connect
from crmbridge.mapping.schema import RULE_IDS

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOB_BUCKETS = (0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)


class Metrics:
    """One registry per daemon (tests start several in one process)."""

    def __init__(self, cache_path: Path | str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter("crmbridge_events_received", "Events accepted into the inbox.",
                                       ["source", "event"], registry=r)
        self.events_rejected = Counter("crmbridge_events_rejected", "Deliveries refused: forged, foreign, "
                                       "malformed (kept as dead letters) or too large.", ["source", "reason"], registry=r)
        self.events_ignored = Counter("crmbridge_events_ignored", "Authentic events the bridge does not react to.",
                                      ["source", "event"], registry=r)
        self.events_processed = Counter("crmbridge_events_processed", "Events the worker settled.",
                                        ["outcome"], registry=r)
        self.ack_latency = Histogram("crmbridge_event_ack_seconds", "From receiving a delivery to its durable commit "
                                     "(the moment the 200 goes out).", buckets=ACK_BUCKETS, registry=r)
        self.reaction = Histogram("crmbridge_event_reaction_seconds", "From receiving an event to the end of the "
                                  "worker round that acted on it.", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
                                  registry=r)
        self.job_runs = Counter("crmbridge_job_runs", "Scheduled job runs by job and status.", ["job", "status"],
                                registry=r)
        self.job_duration = Histogram("crmbridge_job_duration_seconds", "Duration of job runs.", ["job"],
                                      buckets=JOB_BUCKETS, registry=r)
        self.job_last_success = Gauge("crmbridge_job_last_success_timestamp_seconds",
                                      "Unix time of each job's last successful run.", ["job"], registry=r)
        self.crm_requests = Counter("crmbridge_crm_requests", "HTTP requests to the CRM by REST method and outcome "
                                    "(HTTP status, or the CRM's error code).", ["method", "status"], registry=r)
        self.crm_calls = Counter("crmbridge_crm_calls", "REST methods the CRM ran, by method and outcome (ok, or the "
                                 "CRM's error code); each command of a batch counts as its own method.",
                                 ["method", "status"], registry=r)
        self.crm_waits = Counter("crmbridge_crm_wait_seconds", "Seconds spent waiting for the CRM's limits.",
                                 ["kind"], registry=r)
        if cache_path is not None:
            r.register(_CacheCollector(Path(cache_path)))

    # hooks handed to the Bitrix24 client and limiter
    def crm_request(self, method: str, status: str) -> None:
        self.crm_requests.labels(method=method, status=status).inc()

    def crm_call(self, method: str, status: str) -> None:
        self.crm_calls.labels(method=method, status=status).inc()

    def crm_wait(self, kind: str, seconds: float) -> None:
        self.crm_waits.labels(kind=kind).inc(seconds)


class _CacheCollector(Collector):
    """Gauges that are facts of the cache: read at scrape time, so they are right whichever process changed them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily("crmbridge_events_pending", "Events in the inbox waiting to be processed.")
        dead = GaugeMetricFamily("crmbridge_events_dead", "Dead letters not requeued.")
        lag = GaugeMetricFamily("crmbridge_inbox_lag_seconds", "Age of the oldest pending event.")
        violations = GaugeMetricFamily("crmbridge_open_violations", "Open violations by rule.", labels=["rule"])
        actions = GaugeMetricFamily("crmbridge_actions", "Actions in the audit log by status.", labels=["status"])
        try:
            conn = connect(self.path)
        except sqlite3.Error:
            return
        try:
            count, oldest = conn.execute("SELECT COUNT(*), (julianday('now') - julianday(MIN(received_at))) * 86400 "
                                         "FROM inbox WHERE status = 'pending'").fetchone()
            pending.add_metric([], count or 0)
            lag.add_metric([], max(0.0, oldest or 0.0))
            dead.add_metric([], conn.execute("SELECT COUNT(*) FROM dead_letters WHERE requeued_at IS NULL").fetchone()[0])
            open_by_rule = dict.fromkeys(RULE_IDS, 0)  # every rule has a series, 0 included (dashboards, alerts)
            open_by_rule.update(conn.execute(
                "SELECT rule, COUNT(*) FROM violations WHERE resolved IS NULL GROUP BY rule").fetchall())
            for rule, number in open_by_rule.items():
                violations.add_metric([rule], number)
            for status, number in conn.execute("SELECT status, COUNT(*) FROM actions GROUP BY status"):
                actions.add_metric([status], number)
        except sqlite3.Error:
            return
        finally:
            conn.close()
        yield from (pending, dead, lag, violations, actions)


__all__ = ["Metrics"]
