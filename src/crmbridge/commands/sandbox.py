"""`crmbridge sandbox`: serve the built-in Bitrix24-compatible portal on 127.0.0.1."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def sandbox(
        port: int = typer.Option(8024, help="TCP port on 127.0.0.1 (0 = any free port)."),
        deals: int = typer.Option(2000, help="How many deals to seed."),
        seed: int = typer.Option(1, help="Random seed: the same seed gives the same portal."),
        latency_ms: int = typer.Option(0, "--latency-ms", help="Added to every answer, like a real network."),
        faults: float = typer.Option(0.0, help="Share of requests that fail (500, HTML 503, dropped, slow)."),
        events_url: str = typer.Option(None, "--events-url", help="Where to POST outgoing ONCRMDEAL* events."),
        no_limits: bool = typer.Option(False, "--no-limits", help="Turn off the leaky bucket and operating-time limits."),
        app_redirect_uri: str = typer.Option(None, "--app-redirect-uri",
                                             help="The OAuth application's redirect URI (e.g. crmbridge connect --listen)."),
    ) -> None:
        """Serve a Bitrix24-compatible sandbox portal on loopback (for the demo, tests and trials)."""
        from crmbridge.sandbox import serve_forever

        serve_forever(
            port=port, deals=deals, seed=seed, latency_ms=latency_ms, faults=faults,
            events_url=events_url, limits=not no_limits,
            app_options={"redirect_uri": app_redirect_uri} if app_redirect_uri else None,
        )
