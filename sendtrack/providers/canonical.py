"""Canonical provider-callbacks records (CONTRACT §3): builder, deterministic event ids, time conversion."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from schemas.models import MESSAGE_ID_MAX, STATUSES as CONTRACT_STATUSES

STATUSES = frozenset(CONTRACT_STATUSES)
# provider-callbacks.schema.json bounds occurred_at to 13-digit milliseconds.
MIN_MS = 1_000_000_000_000
MAX_MS = 9_999_999_999_999
_MS_THRESHOLD = 1e12  # reference §0: a value above 1e12 is milliseconds
_NUMBER = re.compile(r"[0-9]{1,16}(\.[0-9]{1,9})?")


def event_hash(*parts: str) -> str:
    """The deterministic event id: sha256 of the parts joined with '|', first 32 hex digits."""
    return hashlib.sha256("|".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


def clean(value: str) -> str:
    """value with lone surrogates replaced, so the record always serialises as UTF-8."""
    return value.encode("utf-8", "replace").decode("utf-8")


def message_id(value: Any) -> str | None:
    """Our own message id echoed by a provider, if it is a valid one (1..128 chars)."""
    if isinstance(value, str) and 0 < len(value) <= MESSAGE_ID_MAX:
        return clean(value)
    return None


def callback(
    provider: str,
    status: str,
    occurred_at: int,
    *,
    provider_message_id: str | None = None,
    message_id: str | None = None,
    event_id: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """One canonical callback; absent (None) attributes are omitted, never null."""
    if status not in STATUSES:
        raise ValueError(f"not a canonical status: {status!r}")
    if provider_message_id is None and message_id is None:
        raise ValueError("a callback needs provider_message_id or message_id")
    if event_id is None:
        key = provider_message_id if provider_message_id is not None else message_id
        event_id = event_hash(provider, key or "", status, str(occurred_at))
    record: dict[str, Any] = {
        "event_id": event_id,
        "status": status,
        "occurred_at": occurred_at,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "message_id": message_id,
        **attributes,
    }
    return {k: clean(v) if isinstance(v, str) else v for k, v in record.items() if v is not None}


def in_range(ms: int | None) -> int | None:
    """ms if it is a plausible 13-digit millisecond time, else None."""
    return ms if ms is not None and MIN_MS <= ms <= MAX_MS else None


def epoch_to_ms(value: Any) -> int | None:
    """Seconds or milliseconds since the epoch (number or numeric string) as ms; above 1e12 is ms."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not _NUMBER.fullmatch(value):
            return None
        value = float(value)
    if isinstance(value, int):
        if value > MAX_MS:
            return None
        value = float(value)
    if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
        return None
    ms = value if value >= _MS_THRESHOLD else value * 1000
    return in_range(round(ms))


def iso_to_ms(value: Any) -> int | None:
    """An ISO-8601 time (SES, SNS) as ms; a time without zone is UTC."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _datetime_ms(parsed)


def rfc2822_to_ms(value: Any) -> int | None:
    """An RFC-2822 date (Twilio) as ms."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return _datetime_ms(parsed)


def _datetime_ms(parsed: datetime) -> int | None:
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return in_range(round(parsed.timestamp() * 1000))
    except (OverflowError, ValueError, OSError):
        return None
