"""Verification steps every provider shares: size limit, configured secret, replay window, constant-time compare."""

from __future__ import annotations

import hmac

from sendtrack.providers.base import RawWebhook, Verdict, refuse
from sendtrack.providers.payload import utf8

MISSING = refuse(401, "missing signature")
BAD = refuse(403, "bad signature")
STALE = refuse(403, "timestamp outside window")
REPLAYED = refuse(403, "replayed token")
UNPARSEABLE = refuse(400, "unparseable body")
NOT_CONFIGURED = refuse(403, "not configured")


def configured(secret: str | None) -> bool:
    """Whether a secret setting holds a value."""
    return bool(secret and secret.strip())


def precheck(raw: RawWebhook, max_body_bytes: int, *secrets: str | None) -> Verdict | None:
    """The refusal due before any parsing or crypto (size first, then configuration), or None."""
    if len(raw.body) > max_body_bytes:
        return refuse(413, "body too large")
    if not all(configured(s) for s in secrets):
        return NOT_CONFIGURED
    return None


def within_window(timestamp_ms: int | None, now_ms: int, window_seconds: int, redelivery_seconds: int = 0) -> bool:
    """Whether a signed timestamp is close enough to now to rule out a replay: at most the window ahead
    (clock skew), at most the window plus the provider's redelivery horizon behind.

    The horizon is for providers whose retries keep the signed timestamp of the first attempt and
    whose signature covers the whole body with its event id: a replay inside it is byte-identical to
    a retry, and the event id dedups it downstream."""
    if timestamp_ms is None:
        return False
    age_ms = now_ms - timestamp_ms
    return -window_seconds * 1000 <= age_ms <= (window_seconds + redelivery_seconds) * 1000


def same(expected: str | bytes, given: str | bytes) -> bool:
    """Constant-time equality of two signatures."""
    a = utf8(expected) if isinstance(expected, str) else expected
    b = utf8(given) if isinstance(given, str) else given
    return hmac.compare_digest(a, b)


def hmac_hex(key: str, message: bytes, digest: str = "sha256") -> str:
    """Hex HMAC of message under key."""
    return hmac.new(utf8(key), message, digest).hexdigest()
