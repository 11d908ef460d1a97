"""Bitrix24 connector: the REST client (transport, limiter, retries, batch, lists) and what is read through it."""

from crmbridge.connectors.bitrix24.client import MAX_BATCH, PAGE_SIZE, Bitrix24Client, should_retry
from crmbridge.connectors.bitrix24.encoding import encode_command, encode_params
from crmbridge.connectors.bitrix24.envelope import BatchResult, CallResult, classify_error, infer_scope
from crmbridge.connectors.bitrix24.limiter import Limiter
from crmbridge.connectors.bitrix24.transport import (
    Auth,
    RawResponse,
    RequestsTransport,
    Transport,
    TransportError,
    WebhookAuth,
    redact,
    validate_webhook_url,
)

__all__ = [
    "MAX_BATCH",
    "PAGE_SIZE",
    "Auth",
    "BatchResult",
    "Bitrix24Client",
    "CallResult",
    "Limiter",
    "RawResponse",
    "RequestsTransport",
    "Transport",
    "TransportError",
    "WebhookAuth",
    "classify_error",
    "encode_command",
    "encode_params",
    "infer_scope",
    "redact",
    "should_retry",
    "validate_webhook_url",
]
