"""`python -m crmbridge.sandbox`: run the sandbox portal until Ctrl-C (the `crmbridge sandbox` command does the same)."""

from __future__ import annotations

import argparse

from .server import DEFAULT_PORT, serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crmbridge.sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--deals", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--faults", type=float, default=0.0)
    parser.add_argument("--events-url", default=None)
    parser.add_argument("--no-limits", action="store_true", help="turn the leaky bucket and operating limit off")
    args = parser.parse_args(argv)
    serve_forever(port=args.port, deals=args.deals, seed=args.seed, latency_ms=args.latency_ms,
                  faults=args.faults, events_url=args.events_url, limits=not args.no_limits)


if __name__ == "__main__":
    main()
