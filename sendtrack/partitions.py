"""Which partition Kafka's default partitioner gives a key: murmur2 of its bytes, as the Java client.

The engine asks for every record it reads (is it on its message's partition?) and every record it
routes; status changes go to the partition of the record applied, which owns the message. With
aiokafka's `murmur2` (pure Python, byte by byte) this took 6% of the worker's time late in a
backlog, when status changes were placed too. This one reads the key's 4-byte words in one
`struct.unpack_from` (about twice as fast, tests/unit/test_partitions.py checks it against
aiokafka's on every length), and `Placement` remembers the last keys it placed: a message's request
and callbacks come close together.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data`, unsigned (as aiokafka's `murmur2` returns it)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length >> 2
    for k in struct.unpack_from("<%dI" % words, data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        i = words << 2
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions`, as Kafka's default partitioner places it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Placement:
    """`partition` with a memory of the last keys placed (str keys, UTF-8 as they are sent): at most
    `size` of them, forgotten all at once when it is full."""

    def __init__(self, partitions: int, size: int = 100_000) -> None:
        self.partitions = partitions
        self.size = size
        self._known: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._known.get(key)
        if p is None:
            if len(self._known) >= self.size:
                self._known.clear()
            p = self._known[key] = partition(key.encode(), self.partitions)
        return p
