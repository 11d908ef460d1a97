"""Logging of every crmbridge process: one format, secrets redacted, quiet for a person, informative for a service."""

from __future__ import annotations

import logging

from crmbridge.connectors.http import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Rewrites every log record with webhook codes and tokens replaced by ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def setup(*, debug: bool = False, crmbridge_level: int | None = None) -> None:
    """Root at DEBUG with --debug, else ERROR (retries and pacing stay off an admin's screen); `crmbridge_level` sets
    crmbridge's own loggers apart (a service logs what it does at INFO). Every handler redacts secrets: libraries log
    request lines with the webhook path (urllib3 at DEBUG), and its code is a password."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format=FORMAT)
    if crmbridge_level is not None and not debug:
        logging.getLogger("crmbridge").setLevel(crmbridge_level)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())


__all__ = ["FORMAT", "RedactSecrets", "setup"]
