"""`crmbridge sandbox`: serve the built-in Bitrix24-compatible portal (or amoCRM-compatible account) on 127.0.0.1."""

from __future__ import annotations

import typer

CRMS = ("bitrix24", "amocrm")


def register(app: typer.Typer) -> None:
    @app.command()
    def sandbox(
        crm: str = typer.Option("bitrix24", "--crm", help="Which CRM to imitate: bitrix24 or amocrm."),
        port: int = typer.Option(None, help="TCP port on 127.0.0.1 (0 = any free port; default 8030, amoCRM 8031)."),
        deals: int = typer.Option(2000, help="How many deals (leads) to seed."),
        seed: int = typer.Option(1, help="Random seed: the same seed gives the same portal."),
        latency_ms: int = typer.Option(0, "--latency-ms", help="Added to every answer, like a real network."),
        faults: float = typer.Option(0.0, help="Share of requests that fail (500, HTML 50x, dropped, slow)."),
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
            from crmbridge.errors import ConfigError

            raise ConfigError(f"--crm {crm!r}: use bitrix24 or amocrm")
        if crm == "amocrm":
            from crmbridge.sandbox.amocrm import serve_forever as serve_account

            serve_account(port=8031 if port is None else port, deals=deals, seed=seed, latency_ms=latency_ms,
                          faults=faults, hooks_url=events_url, limits=not no_limits)
            return
        from crmbridge.sandbox.server import DEFAULT_PORT, serve_forever

        serve_forever(
            port=DEFAULT_PORT if port is None else port, deals=deals, seed=seed, latency_ms=latency_ms, faults=faults,
            events_url=events_url, limits=not no_limits, webhook_user=webhook_user,
            app_options={"redirect_uri": app_redirect_uri} if app_redirect_uri else None,
        )
