"""`crmbridge sandbox`: serve the built-in Bitrix24-compatible portal on 127.0.0.1."""

from __future__ import annotations

import errno
import math

import typer

from crmbridge.errors import ConfigError, CrmBridgeError

#: the largest sandbox a machine seeds in reasonable time and memory (the benchmarks use 500,000)
MAX_DEALS = 1_000_000


def share(value: float) -> float:
    """--faults: a share of requests, 0 to 1 (click's range check lets NaN through)."""
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise typer.BadParameter(f"{value} is not a share of requests: write a number from 0 to 1, e.g. 0.2")
    return value


def register(app: typer.Typer) -> None:
    @app.command()
    def sandbox(
        port: int = typer.Option(8024, min=0, max=65535, help="TCP port on 127.0.0.1 (0 = any free port)."),
        deals: int = typer.Option(2000, min=0, max=MAX_DEALS, help="How many deals to seed."),
        seed: int = typer.Option(1, help="Random seed: the same seed gives the same portal."),
        latency_ms: int = typer.Option(0, "--latency-ms", min=0, max=60_000,
                                       help="Added to every answer, like a real network."),
        faults: float = typer.Option(0.0, callback=share,
                                     help="Share of requests that fail, 0 to 1 (500, HTML 503, dropped, slow)."),
        events_url: str = typer.Option(None, "--events-url", help="Where to POST outgoing ONCRMDEAL* events."),
        no_limits: bool = typer.Option(False, "--no-limits", help="Turn off the leaky bucket and operating-time limits."),
    ) -> None:
        """Serve a Bitrix24-compatible sandbox portal on loopback (for the demo, tests and trials)."""
        from crmbridge.sandbox import serve_forever

        try:
            serve_forever(
                port=port, deals=deals, seed=seed, latency_ms=latency_ms, faults=faults,
                events_url=events_url, limits=not no_limits,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on 127.0.0.1 is in use by another program",
                                  hint="pass another --port, or --port 0 for any free one") from None
            raise CrmBridgeError(f"cannot serve on 127.0.0.1:{port} ({(exc.strerror or str(exc)).lower()})",
                                 hint="pass another --port, or --port 0 for any free one") from None
