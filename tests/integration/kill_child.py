"""An enforce run in a process of its own that kills itself (SIGKILL) at a step of the executor, for the crash tests.

python -m tests.integration.kill_child WEBHOOK_URL CACHE_PATH STEP OCCURRENCE
    STEP: intents | answer | outcomes (Executor.checkpoint), or "none" to run to the end (the parent may kill it
    from outside, e.g. while the portal runs a batch). OCCURRENCE: the n-th time the step is reached.
"""

from __future__ import annotations

import os
import signal
import sys

from crmbridge.cache.store import open_cache
from tests.integration.enforce_kit import SETTLING, fast_client, kill_volume, run


def main(url: str, cache_path: str, step: str, occurrence: str) -> None:
    reached = 0

    def checkpoint(name: str) -> None:
        nonlocal reached
        if name == step:
            reached += 1
            if reached == int(occurrence):
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no finally, no rollback, no lock release

    cache = open_cache(cache_path)
    print("started", flush=True)
    run(fast_client(url), cache, kill_volume(), SETTLING, checkpoint=checkpoint)
    cache.close()
    print("finished", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
