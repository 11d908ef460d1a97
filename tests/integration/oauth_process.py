"""A crmbridge process for the OAuth and offline-event tests: settings from the environment, real HTTP to the sandbox.

Usage:
  oauth_process.py call [--start-at T] [--kill-at CHECKPOINT]    one crm.deal.get through the connected app
  oauth_process.py poll [--kill-at CHECKPOINT]                   one offline poll into the inbox
Prints one JSON line: {"ok": ...} or {"error": class name, "message": ...}. A kill leaves no line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from crmbridge.config import load_settings  # noqa: E402
from crmbridge.connectors.bitrix24.app import authorization_server, oauth_auth  # noqa: E402
from crmbridge.connectors.bitrix24.client import Bitrix24Client  # noqa: E402
from crmbridge.connectors.bitrix24.oauth import CRM, OAuthAuth  # noqa: E402
from crmbridge.connectors.oauth import OAuthSession, TokenStore  # noqa: E402
from crmbridge.errors import CrmBridgeError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("call", "poll"))
    parser.add_argument("--kill-at", default="")
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()

    def checkpoint(name: str) -> None:
        if name == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    settings = load_settings()
    try:
        if args.mode == "call":
            store = TokenStore(settings.cache_path, CRM, checkpoint=checkpoint)
            auth = OAuthAuth(OAuthSession(store, authorization_server(settings).refresh), connector="crmbridge")
            client = Bitrix24Client(auth=auth, rate=100, burst=100)
            if args.start_at:
                time.sleep(max(0.0, args.start_at - time.time()))
            deal = client.call("crm.deal.get", {"id": 1}).result
            print(json.dumps({"ok": deal["ID"], "generation": store.require().generation}))
        else:
            from crmbridge.live.inbox import Inbox
            from crmbridge.live.offline import OfflinePoller

            auth_ = oauth_auth(settings)
            assert auth_ is not None
            client = Bitrix24Client(auth=auth_, rate=100, burst=100)
            with Inbox(settings.cache_path) as inbox:
                poller = OfflinePoller(client, settings.cache_path, connector=auth_.connector, checkpoint=checkpoint,
                                       batch_size=int(os.environ.get("TEST_BATCH_SIZE", "50")))
                taken = 0
                while True:
                    more = poller.poll(inbox)
                    taken += more
                    if not more:
                        break
            print(json.dumps({"ok": taken, "stats": poller.stats}))
    except CrmBridgeError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))


if __name__ == "__main__":
    main()
