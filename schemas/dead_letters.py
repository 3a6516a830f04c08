"""The one dead-letter builder: a refused record as the `dead-letters` topic and the
`dead_letters_raw` table carry it (CONTRACT §3, docs/contract.md), whoever refused it — the engine,
the webhook adapter, or ClickHouse (the sink's `rejected_by_clickhouse`).

A dead letter keeps the record's own bytes (UTF-8 text, else base64) and where it was read
(topic, partition, offset). It always fits one Kafka record: a longer payload keeps its first
PAYLOAD_MAX bytes, a longer key its first KEY_MAX, and the error says so; the whole record stays at
its offset for the topic's retention.
"""

from __future__ import annotations

import base64
from typing import Optional

import orjson

from schemas.models import DeadLetter

PAYLOAD_MAX = 512 * 1024  # original bytes kept per dead letter
ERROR_MAX = 2000
KEY_MAX = 64 * 1024
RECORD_MAX = 900_000  # bytes of the encoded dead letter: under Kafka's default 1 MB record limit

Origin = tuple[str, int, int]  # (topic, partition, offset) of the refused record


def _text(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


def build(origin: Origin, key: Optional[bytes], payload: bytes, error_type: str, error: str,
          failed_at: int) -> tuple[Optional[bytes], bytes]:
    """The dead letter of the record at `origin`: (the key to publish it under, the encoded value).
    The value is at most RECORD_MAX bytes and the key at most KEY_MAX, however large the record was."""
    error = error[:ERROR_MAX]
    if len(payload) > PAYLOAD_MAX:
        error += f" (payload truncated to its first {PAYLOAD_MAX} of {len(payload)} bytes)"
        payload = payload[:PAYLOAD_MAX]
    if key is not None and len(key) > KEY_MAX:
        error += f" (key truncated to its first {KEY_MAX} of {len(key)} bytes)"
        key = key[:KEY_MAX]
    text, encoding = _text(payload)
    letter = DeadLetter(source_topic=origin[0], partition=origin[1], offset=origin[2],
                        key=_text(key)[0] if key is not None else None, payload=text, payload_encoding=encoding,
                        error_type=str(error_type), error=error, failed_at=failed_at)
    value = orjson.dumps(letter)
    while len(value) > RECORD_MAX:
        # JSON escaping can make a payload several times longer: keep cutting until it fits.
        letter.payload = letter.payload[: len(letter.payload) // 2]
        letter.error = error + f" (payload truncated to fit a {RECORD_MAX}-byte record)"
        value = orjson.dumps(letter)
    return key, value
