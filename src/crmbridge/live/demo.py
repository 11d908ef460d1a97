"""The live part of `crmbridge demo`: the daemon on loopback, a manager skips a stage, the correction lands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.markup import escape

from crmbridge.cache.actions import ActionsRepository
from crmbridge.cache.store import open_cache
from crmbridge.commands import common

#: the stage move the demo makes: pipeline 1 (B2B new clients), Презентация -> Обратная связь, skipping Общее КП
FROM_STAGE, TO_STAGE = "C1:NEW", "C1:EXECUTING"


def run_live_demo(portal: Any, cache_path: Path, settings: Any) -> float | None:
    """Start `crmbridge serve`, point the sandbox's outgoing webhook at it, move a deal, time the revert."""
    console = common.console
    console.print("\n[bold]Live bridge[/bold]: `crmbridge serve` on loopback receives the portal's events "
                  "(R1 in enforce for this part)")
    with tempfile.TemporaryDirectory(prefix="crmbridge-demo-") as tmp:
        mappings = Path(tmp) / "mappings"
        shutil.copytree(settings.mappings_dir, mappings)
        text = (mappings / "regulation.yaml").read_text(encoding="utf-8")
        (mappings / "regulation.yaml").write_text(text.replace("  R1:\n    mode: warn", "  R1:\n    mode: enforce"),
                                                  encoding="utf-8")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
        env.update({"CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url,
                    "CRMBRIDGE_BITRIX24_APPLICATION_TOKEN": portal.application_token,
                    "CRMBRIDGE_CACHE_PATH": str(cache_path.resolve()), "CRMBRIDGE_MAPPINGS_DIR": str(mappings),
                    "CRMBRIDGE_JOBS_DIR": str(Path(tmp) / "jobs")})
        log = open(Path(tmp) / "serve.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "crmbridge", "serve", "--port", str(port), "--no-jobs"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            if not _wait_ready(url, daemon):
                console.print("[red]the daemon did not get ready[/red]; its log:\n"
                              + escape((Path(tmp) / "serve.log").read_text(errors="replace")[-2000:]))
                return None
            console.print(f"crmbridge serve is ready at {url} (/readyz 200); the sandbox's outgoing webhook now "
                          f"posts to {url}/bitrix24/events")
            portal.send_events_to(url + "/bitrix24/events")
            with portal.state.lock:
                deal_id = min(int(row["ID"]) for row in portal.state.deals.rows.values() if row["STAGE_ID"] == FROM_STAGE)
                row = portal.state.deals.rows[deal_id]
                title, manager = row["TITLE"], int(row["ASSIGNED_BY_ID"])
            console.print(f"A manager moves deal {deal_id} «{escape(title)}» from «Презентация» straight to "
                          "«Обратная связь», skipping «Общее КП» …")
            started = time.perf_counter()
            portal.update_deal(deal_id, {"STAGE_ID": TO_STAGE}, user_id=manager)
            took = None
            while time.perf_counter() - started < 30:
                with portal.state.lock:
                    if portal.state.deals.rows[deal_id]["STAGE_ID"] == FROM_STAGE:
                        took = time.perf_counter() - started
                        break
                time.sleep(0.01)
            if took is None:
                console.print("[red]no correction within 30 s[/red]")
                return None
            console.print(f"[green]✓[/green] crmbridge moved it back to «Презентация» {took:.2f} s after the move:")
            time.sleep(0.5)  # the rest of the round (comment, notification) and the echo of the revert
            with open_cache(cache_path) as cache:
                for row in ActionsRepository(cache).log(deal=deal_id, limit=5):
                    console.print(f"    {row['kind']:<13} {row['status']:<5} {escape(row['summary'] or '')}")
            return took
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(60)
                console.print(f"SIGTERM: the daemon finished its work in flight and exited with {code}")
            except subprocess.TimeoutExpired:
                daemon.kill()
            log.close()
            portal.send_events_to(None)


def _wait_ready(url: str, daemon: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False
