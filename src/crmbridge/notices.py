"""What a person should see even without --debug: long waits for the portal, skipped records, held deletions.

Library code logs these to the `crmbridge.notice` logger; the CLI shows each as one `crmbridge: …` line on
stderr (with --debug they appear in the debug log instead), a scheduler or server may route them elsewhere.
"""

from __future__ import annotations

import logging

LOGGER = "crmbridge.notice"
log = logging.getLogger(LOGGER)


def notice(message: str) -> None:
    """Tell the person running crmbridge something they should know; never a secret, one line."""
    log.warning(message)
