"""Job commands for the job tests: module-level, so a job's child process gets them by reference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def batches(ctx: Any) -> dict[str, Any]:
    """A command of many small committed batches: one line per batch in <cache>.batches, a checkpoint between."""
    out = Path(f"{ctx.settings.cache_path}.batches")
    done = 0
    while done < 10_000:
        with out.open("a", encoding="utf-8") as handle:
            handle.write(f"batch {done}\n")
        done += 1
        time.sleep(0.05)
        ctx.checkpoint()
    return {"batches": done}


def stuck(ctx: Any) -> dict[str, Any]:
    """A command that never reaches a checkpoint (a call that hangs)."""
    Path(f"{ctx.settings.cache_path}.stuck").write_text("started", encoding="utf-8")
    time.sleep(3600)
    return {}


def wait_for_file(ctx: Any) -> dict[str, Any]:
    """Runs until <cache>.release exists; marks <cache>.started first."""
    Path(f"{ctx.settings.cache_path}.started").write_text("yes", encoding="utf-8")
    release = Path(f"{ctx.settings.cache_path}.release")
    while not release.exists():
        time.sleep(0.05)
    return {"ok": True}
