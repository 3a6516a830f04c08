"""The one dead-letter builder (schemas/dead_letters.py): the engine's, the webhook adapter's and the
sink's dead letters all come from it, and every one fits a Kafka record."""

from __future__ import annotations

import base64

import orjson
import pytest

from schemas import dead_letters
from sinks import writer

ORIGIN = ("send-requests", 3, 42)


def test_the_record_is_kept_with_where_it_was_read():
    key, value = dead_letters.build(ORIGIN, b"m1", b'{"a":1}', "invalid_json", "bad", 7)
    assert key == b"m1"
    assert orjson.loads(value) == {"source_topic": "send-requests", "partition": 3, "offset": 42, "key": "m1",
                                   "payload": '{"a":1}', "payload_encoding": "utf-8", "error_type": "invalid_json",
                                   "error": "bad", "failed_at": 7}


def test_bytes_that_are_not_utf8_are_kept_as_base64():
    _, value = dead_letters.build(ORIGIN, b"\xff\xfe", b"\xff\x00", "undecodable", "x", 0)
    doc = orjson.loads(value)
    assert doc["payload_encoding"] == "base64" and base64.b64decode(doc["payload"]) == b"\xff\x00"
    assert base64.b64decode(doc["key"]) == b"\xff\xfe"


@pytest.mark.parametrize("payload, key", [
    (b"x" * (dead_letters.PAYLOAD_MAX + 10), None),
    (b'"' * dead_letters.PAYLOAD_MAX, None),  # JSON escaping doubles it
    (b"\x01" * dead_letters.PAYLOAD_MAX, None),  # \u0001: six times longer
    (b"{}", b"k" * (dead_letters.KEY_MAX + 1)),
])
def test_every_dead_letter_fits_one_record(payload, key):
    out_key, value = dead_letters.build(ORIGIN, key, payload, "too_large", "e" * 5000, 0)
    assert len(value) <= dead_letters.RECORD_MAX
    assert out_key is None or len(out_key) <= dead_letters.KEY_MAX
    doc = orjson.loads(value)
    assert len(doc["error"]) >= dead_letters.ERROR_MAX and "truncated" in doc["error"]


def test_the_sinks_rejected_rows_come_from_the_same_builder():
    row = orjson.loads(writer._dead_row(b'{"status":1}', "status-changes", 2, 9, writer.REJECTED_BY_CLICKHOUSE, "no"))
    assert list(row) == list(writer.DEAD_LETTER_COLUMNS)
    assert (row["source_topic"], row["partition"], row["offset"], row["key"], row["payload"]) == \
        ("status-changes", 2, 9, None, '{"status":1}')
    # Bounded as every dead letter is: the record itself stays at its offset in Kafka.
    big = writer._dead_row(b"x" * (dead_letters.PAYLOAD_MAX + 100), "status-changes", 2, 9, "r", "e" * 3000)
    doc = orjson.loads(big)
    assert len(doc["payload"]) == dead_letters.PAYLOAD_MAX and "payload truncated to its first" in doc["error"]
    assert len(big) <= dead_letters.RECORD_MAX
