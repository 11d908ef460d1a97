"""`crmbridge sandbox`: serve the built-in Bitrix24-compatible portal (or amoCRM-compatible account) on 127.0.0.1."""

from __future__ import annotations

import errno
import math

import typer

from crmbridge.errors import ConfigError, CrmBridgeError

CRMS = ("bitrix24", "amocrm")
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
        crm: str = typer.Option("bitrix24", "--crm", help="Which CRM to imitate: bitrix24 or amocrm."),
        port: int = typer.Option(None, min=0, max=65535,
                                 help="TCP port on 127.0.0.1 (0 = any free port; default 8030, amoCRM 8031)."),
        deals: int = typer.Option(2000, min=0, max=MAX_DEALS, help="How many deals (leads) to seed."),
        seed: int = typer.Option(1, help="Random seed: the same seed gives the same portal."),
        latency_ms: int = typer.Option(0, "--latency-ms", min=0, max=60_000,
                                       help="Added to every answer, like a real network."),
        faults: float = typer.Option(0.0, callback=share,
                                     help="Share of requests that fail, 0 to 1 (500, HTML 50x, dropped, slow)."),
        events_url: str = typer.Option(None, "--events-url",
                                       help="Where to POST outgoing events (Bitrix24 ONCRMDEAL*, amoCRM webhooks)."),
        no_limits: bool = typer.Option(False, "--no-limits", help="Turn off the rate (and operating-time) limits."),
        app_redirect_uri: str = typer.Option(None, "--app-redirect-uri",
                                             help="Bitrix24: the OAuth application's redirect URI (crmbridge connect --listen)."),
        webhook_user: int = typer.Option(1, "--webhook-user", min=1, max=9,
                                         help="Bitrix24: the user who created the inbound webhook (1 is the administrator; "
                                              "2..9 are managers, who see only their own tasks)."),
    ) -> None:
        """Serve a CRM-compatible sandbox on loopback (for the demo, tests and trials)."""
        if crm not in CRMS:
            raise ConfigError(f"--crm {crm!r}: use bitrix24 or amocrm")
        from crmbridge.sandbox.server import DEFAULT_PORT

        port = (8031 if crm == "amocrm" else DEFAULT_PORT) if port is None else port
        try:
            if crm == "amocrm":
                from crmbridge.sandbox.amocrm import serve_forever as serve_account

                serve_account(port=port, deals=deals, seed=seed, latency_ms=latency_ms,
                              faults=faults, hooks_url=events_url, limits=not no_limits)
                return
            from crmbridge.sandbox.server import serve_forever

            serve_forever(
                port=port, deals=deals, seed=seed, latency_ms=latency_ms, faults=faults,
                events_url=events_url, limits=not no_limits, webhook_user=webhook_user,
                app_options={"redirect_uri": app_redirect_uri} if app_redirect_uri else None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on 127.0.0.1 is in use by another program",
                                  hint="pass another --port, or --port 0 for any free one") from None
            raise CrmBridgeError(f"cannot serve on 127.0.0.1:{port} ({(exc.strerror or str(exc)).lower()})",
                                 hint="pass another --port, or --port 0 for any free one") from None
