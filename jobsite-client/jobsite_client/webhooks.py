"""Verifying the service's webhook deliveries (Standard Webhooks, https://www.standardwebhooks.com/)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError, WebhookVerificationError

from jobsite_client.errors import InvalidWebhook
from jobsite_client.models import WebhookEvent


def verify_webhook(payload: bytes, headers: Mapping[str, str], secret: str) -> WebhookEvent:
    """Check a delivery's signature and age, then return it parsed (`event.job` for the job it reports).

    `payload` is the request body exactly as received (bytes, before any JSON decoding); `headers` any
    mapping of the request headers (names in any case). `secret` is the signing secret exactly as the
    service shows it, `whsec_<base64 key>`: the HMAC key is the base64-decoded part after `whsec_`.

    What is signed: the string `{webhook-id}.{webhook-timestamp}.{body}`, with HMAC-SHA256 under that key;
    `webhook-signature` holds space-separated `v1,<base64 signature>` entries (two while a rotated secret
    still signs for 24 h), any one of which may match. A timestamp more than 5 minutes from now, in either
    direction, is refused, so that a captured delivery cannot be replayed later. `webhook-id` is stable
    across retries of one delivery: use it to drop duplicates.

    Raises `InvalidWebhook` for a missing header, a bad or absent signature, a stale or future timestamp,
    a malformed secret, or a body that is not a JSON object.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        Webhook(secret).verify(payload, lowered, json_parse=False)
    except (WebhookVerificationError, EmptyWebhookSecretError, ValueError) as exc:  # binascii.Error is a ValueError
        raise InvalidWebhook(f"webhook verification failed: {exc}") from exc
    try:
        data: Any = json.loads(payload)
    except ValueError as exc:
        raise InvalidWebhook("webhook body is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidWebhook("webhook body is not a JSON object")
    timestamp = datetime.fromtimestamp(int(lowered["webhook-timestamp"]), tz=UTC)
    return WebhookEvent(id=lowered["webhook-id"], timestamp=timestamp, data=data)
