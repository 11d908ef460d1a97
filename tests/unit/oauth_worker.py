"""A separate process that refreshes a token through TokenStore (for the cross-process and crash tests).

Usage: oauth_worker.py CACHE SERVER_STATE [--kill-at CHECKPOINT] [--exchange-delay S] [--generation N]
Prints one JSON line: {"generation": .., "access": ..} or {"error": class name, "message": ..}.
The authorization server is a file (see FileAuthServer): every process sees the same one.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from crmbridge.connectors.oauth import TokenGrant, TokenStore  # noqa: E402
from crmbridge.errors import CrmBridgeError, ReauthorizationRequired  # noqa: E402


class FileAuthServer:
    """An authorization server with single-use refresh tokens, its state in a JSON file shared by processes.

    strict=True refuses a used refresh token (as Bitrix24 and amoCRM do); strict=False keeps
    honouring it (a server with a reuse grace), which lets the tests tell the two cases apart.
    """

    def __init__(self, path: Path, *, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay

    @staticmethod
    def create(path: Path, refresh_token: str, *, strict: bool = True) -> None:
        path.write_text(json.dumps({"valid": [refresh_token], "calls": 0, "strict": strict}))

    def state(self) -> dict:
        return json.loads(self.path.read_text())

    def __call__(self, refresh_token: str) -> TokenGrant:
        with open(self.path, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            state = json.loads(handle.read())
            state["calls"] += 1
            accepted = refresh_token in state["valid"]
            if accepted:
                number = state["calls"]
                if state["strict"]:
                    state["valid"].remove(refresh_token)
                state["valid"].append(f"refresh-{number}")
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(state))
        if not accepted:
            raise ReauthorizationRequired(
                "oauth/token: invalid_grant", method="oauth/token", code="invalid_grant",
                description="Invalid refresh token")
        time.sleep(self.delay)  # the answer travels back while the server has already rotated
        return TokenGrant(f"access-{number}", f"refresh-{number}", time.time() + 3600, {"number": number})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("server")
    parser.add_argument("--kill-at", default="")
    parser.add_argument("--exchange-delay", type=float, default=0.0)
    parser.add_argument("--generation", type=int, default=None)
    parser.add_argument("--start-at", type=float, default=0.0, help="wall time to start at (lines up processes)")
    args = parser.parse_args()

    def checkpoint(name: str) -> None:
        if name == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    store = TokenStore(args.cache, "bitrix24", checkpoint=checkpoint)
    generation = args.generation if args.generation is not None else store.require().generation
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    try:
        pair = store.refresh(generation, FileAuthServer(Path(args.server), delay=args.exchange_delay))
    except CrmBridgeError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    print(json.dumps({"generation": pair.generation, "access": pair.access_token, "refresh": pair.refresh_token}))


if __name__ == "__main__":
    main()
