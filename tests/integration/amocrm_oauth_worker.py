"""A separate crmbridge process that calls an amoCRM account with the stored OAuth tokens (cross-process / crash tests).

Usage: amocrm_oauth_worker.py BASE_URL [--kill-at CHECKPOINT]
Settings (cache path, client id, secret, redirect URI) come from the environment, as for the CLI.
Prints one JSON line: {"name": ..} (the account answered) or {"error": class name, "message": ..}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from crmbridge.config import load_settings  # noqa: E402
from crmbridge.connectors.amocrm.client import AmoCRMClient  # noqa: E402
from crmbridge.connectors.amocrm.limiter import RateWindow  # noqa: E402
from crmbridge.connectors.amocrm.oauth import oauth_auth_from  # noqa: E402
from crmbridge.errors import CrmBridgeError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--kill-at", default=None)
    args = parser.parse_args()

    def checkpoint(name: str) -> None:
        if name == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a power cut would

    settings = load_settings()
    client = AmoCRMClient(args.base_url, auth=oauth_auth_from(settings, args.base_url, checkpoint=checkpoint),
                          limiter=RateWindow(100), max_attempts=2)
    try:
        account = client.get("/api/v4/account") or {}
        print(json.dumps({"name": account.get("name")}))
    except CrmBridgeError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))


if __name__ == "__main__":
    main()
