"""Live-bridge fixtures: a sandbox portal on 127.0.0.1 and `crmbridge serve` as a real subprocess next to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crmbridge.cache.store import open_cache
from crmbridge.connectors.bitrix24.client import Bitrix24Client
from crmbridge.connectors.bitrix24.reader import Bitrix24Reader
from crmbridge.sandbox import SandboxPortal
from crmbridge.sync import Syncer

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
TOKEN = "sandbox-app-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enforcing_mappings(target: Path, rules: tuple[str, ...] = ("R1",)) -> Path:
    """The shipped mapping files with the given rules switched to `enforce`."""
    shutil.copytree(MAPPINGS, target)
    text = (target / "regulation.yaml").read_text(encoding="utf-8")
    for rule in rules:
        text = text.replace(f"  {rule}:\n    mode: warn", f"  {rule}:\n    mode: enforce")
        text = text.replace(f"  {rule}:\n    mode: audit", f"  {rule}:\n    mode: enforce")
    (target / "regulation.yaml").write_text(text, encoding="utf-8")
    return target


class LiveDaemon:
    """`crmbridge serve` in a subprocess; `.url` is its base URL."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, wait: float = 30.0) -> LiveDaemon:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "crmbridge", "serve", "--port", str(self.port), *extra],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"crmbridge serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.get("/livez")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"crmbridge serve did not answer /livez:\n{self.output()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, body: bytes, content_type: str = "application/x-www-form-urlencoded") -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"not ready: {self.get('/readyz')}\n{self.output()}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[..., tuple[SandboxPortal, LiveDaemon]]]:
    """live(deals=.., rules=("R1",), jobs=None, sync=True, **portal options) -> (portal, daemon not started)."""
    portals: list[SandboxPortal] = []
    daemons: list[LiveDaemon] = []

    def make(*, deals: int = 120, seed: int = 3, rules: tuple[str, ...] = ("R1",), jobs: dict[str, str] | None = None,
             sync: bool = True, cache: Path | None = None, port: int | None = None, **options: Any
             ) -> tuple[SandboxPortal, LiveDaemon]:
        options.setdefault("limits", False)
        options.setdefault("events_delay", 0.0)
        portal = SandboxPortal(deals=deals, seed=seed, **options).start(port=0)
        portals.append(portal)
        cache_path = cache or tmp_path / "cache.db"
        mappings = tmp_path / "mappings"
        if not mappings.exists():
            enforcing_mappings(mappings, rules)
        jobs_dir = tmp_path / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        for name, text in (jobs or {}).items():
            (jobs_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
        if sync:
            opened = open_cache(cache_path)
            try:
                Syncer(Bitrix24Reader(Bitrix24Client(portal.webhook_url, rate=1000, burst=1000)), opened).run(full=True)
            finally:
                opened.close()
        env = {key: value for key, value in os.environ.items() if not key.startswith("CRMBRIDGE_")}
        env.update({
            "CRMBRIDGE_BITRIX24_WEBHOOK_URL": portal.webhook_url, "CRMBRIDGE_BITRIX24_APPLICATION_TOKEN": TOKEN,
            "CRMBRIDGE_CACHE_PATH": str(cache_path), "CRMBRIDGE_MAPPINGS_DIR": str(mappings),
            "CRMBRIDGE_JOBS_DIR": str(jobs_dir), "CRMBRIDGE_BITRIX24_RATE": "50", "CRMBRIDGE_BITRIX24_BURST": "500",
            "CRMBRIDGE_STOP_TIMEOUT_SECONDS": "20",
        })
        daemon = LiveDaemon(env, port or free_port(), tmp_path / f"serve-{len(daemons)}.log")
        daemons.append(daemon)
        return portal, daemon

    yield make
    for daemon in daemons:
        daemon.stop()
    for portal in portals:
        portal.stop()
