"""The hostile-input suite: a broken or hostile portal, file or terminal can neither lose data nor crash crmbridge.

Every test carries `@pytest.mark.hostile("<category>")`; at the end of a run the suite prints, per
category, how many cases it tried, how many crmbridge handled gracefully (the test passed), how many
crashed (a traceback or an unexpected exception) and how many went wrong otherwise (data lost, a wrong
or unclear answer). Portal cases run over loopback: the sandbox portal behind a `RewritingProxy`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.sandbox import SandboxPortal
from crmbridge.sandbox.proxy import RewritingProxy

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"

_TALLY: dict[str, dict[str, int]] = defaultdict(lambda: {"tried": 0, "graceful": 0, "crashed": 0, "wrong": 0})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hostile(category): a case of the hostile-input suite, tallied per category")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("hostile")
    if marker is None or report.when != "call" and not (report.when == "setup" and report.failed):
        return
    tally = _TALLY[marker.args[0]]
    tally["tried"] += 1
    if report.passed:
        tally["graceful"] += 1
        return
    text = str(report.longrepr)
    crashed = call.excinfo is not None and not call.excinfo.errisinstance(AssertionError) or "Traceback" in text
    tally["crashed" if crashed else "wrong"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TALLY:
        return
    write = terminalreporter.write_line
    write("")
    write("hostile-input suite: per category, cases tried / handled gracefully / crashed / wrong otherwise")
    for category in sorted(_TALLY):
        counts = _TALLY[category]
        write(f"  {category:<16} tried {counts['tried']:>3}   graceful {counts['graceful']:>3}   "
              f"crashed {counts['crashed']:>3}   wrong {counts['wrong']:>3}")
    totals = {key: sum(counts[key] for counts in _TALLY.values()) for key in ("tried", "graceful", "crashed", "wrong")}
    write(f"  {'all':<16} tried {totals['tried']:>3}   graceful {totals['graceful']:>3}   "
          f"crashed {totals['crashed']:>3}   wrong {totals['wrong']:>3}")


# --- the command line, in process --------------------------------------------------------------------


@dataclass
class CliResult:
    """What one `crmbridge …` run did."""

    code: int
    out: str
    err: str
    crashed: bool  # an exception escaped main(): what a user would see as a traceback

    def one_line(self) -> str:
        """The single line a user reads on stderr; fails the test on a traceback or a flood."""
        assert not self.crashed, self.err
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        return lines[0]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> CliResult:
    """`crmbridge <args>` in this process (fast), with the environment and working folder given."""
    from crmbridge import cli
    from crmbridge.commands import common

    saved_env = dict(os.environ)
    saved_cwd = Path.cwd()
    saved_argv = sys.argv
    out, err = io.StringIO(), io.StringIO()
    code, crashed = 0, False
    try:
        for name in list(os.environ):
            if name.startswith("CRMBRIDGE_"):
                del os.environ[name]
        # the sandboxes here run without limits: a client that starts with a full bucket (as after a burst on a
        # real portal) would wait for nothing in every command
        os.environ.update({"CRMBRIDGE_CACHE_PATH": str(cwd / "cache.db"), "CRMBRIDGE_MAPPINGS_DIR": str(MAPPINGS),
                           "CRMBRIDGE_BITRIX24_MAX_ATTEMPTS": "2", "CRMBRIDGE_BITRIX24_RATE": "1000",
                           "CRMBRIDGE_BITRIX24_BURST": "1000", "COLUMNS": "200"})
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = ["crmbridge", *args]
        common.state.debug = False
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 - a crash is what this helper reports
                crashed, code = True, 1
                err.write(traceback.format_exc())
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return CliResult(code, out.getvalue(), err.getvalue(), crashed)


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., CliResult]:
    """`cli("audit", "--json", env={...})` runs in a fresh folder (tmp_path) with its own cache path."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        return run_cli(*args, cwd=cwd or tmp_path, env=env)

    return run


# --- portals -----------------------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[ExitStack]:
    """Portals and proxies a test starts; all stopped when it ends."""
    with ExitStack() as started:
        yield started


@pytest.fixture
def mappings_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped mappings folder."""
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


@dataclass
class World:
    """A sandbox portal behind a rewriting proxy, a cache file and the CLI pointed at both."""

    portal: SandboxPortal
    proxy: RewritingProxy
    folder: Path
    cli: Callable[..., CliResult]

    @property
    def cache_path(self) -> Path:
        return self.folder / "cache.db"

    @property
    def env(self) -> dict[str, str]:
        return {"CRMBRIDGE_BITRIX24_WEBHOOK_URL": self.proxy.webhook_url, "CRMBRIDGE_CACHE_PATH": str(self.cache_path),
                "CRMBRIDGE_BITRIX24_RATE": "1000", "CRMBRIDGE_BITRIX24_BURST": "1000"}

    def run(self, *args: str, **env: str) -> CliResult:
        return self.cli(*args, env={**self.env, **env}, cwd=self.folder)

    def sync(self, *args: str) -> CliResult:
        result = self.run("sync", *args)
        return result

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cache = open_cache(self.cache_path)
        try:
            return cache.query(sql, params or [])
        finally:
            cache.close()

    def count(self, table: str, where: str = "1=1") -> int:
        return int(self.query(f"SELECT COUNT(*) AS n FROM {table} WHERE {where}")[0]["n"])


@pytest.fixture
def make_world(servers: ExitStack, cli: Callable[..., CliResult], tmp_path: Path) -> Callable[..., World]:
    """`make_world(deals=300)`: a started portal (no limits) behind a started proxy; nothing synced yet."""

    def build(**portal_options: Any) -> World:
        portal_options = {"deals": 60, "seed": 5, "limits": False, **portal_options}
        portal = servers.enter_context(SandboxPortal(**portal_options))
        return World(portal, servers.enter_context(RewritingProxy(portal.webhook_url)), tmp_path, cli)

    return build
