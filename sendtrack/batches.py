"""The engine's internal batch records (`sendtrack-routed`, `sendtrack-by-provider-id`): one record
per partition holding many items, `{"batch": [item, ...]}` under BATCH_KEY (docs/contract.md §3)."""

from __future__ import annotations

BATCH_KEY = b"\x00batch"  # key of an internal record carrying a batch of items for one partition
BATCH_RECORD_MAX = 512 * 1024  # bytes of items per internal record; a larger item travels alone
ENVELOPE = len(BATCH_KEY) + len(b'{"batch":[]}')


def pack(items: list[bytes]) -> list[bytes]:
    """Encoded items as batch record values, each under BATCH_RECORD_MAX bytes of items unless it
    holds a single larger item; in their order."""
    records: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for item in items:
        if chunk and size + len(item) > BATCH_RECORD_MAX:
            records.append(b'{"batch":[' + b",".join(chunk) + b"]}")
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        records.append(b'{"batch":[' + b",".join(chunk) + b"]}")
    return records
