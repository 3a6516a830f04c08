"""Which partition Kafka's default partitioner gives a key: murmur2 of its bytes, as the Java client.

The engine asks for every record it reads (is it on its message's partition?) and every record it
routes; status changes go to the partition of the record applied, which owns the message. With
aiokafka's `murmur2` (pure Python, byte by byte) this took 6% of the worker's time late in a
backlog, when status changes were placed too. This one reads the key's 4-byte words in one
`struct.unpack_from` (about twice as fast, tests/unit/test_partitions.py checks it against
aiokafka's on every length), and `Placement` remembers the last keys it placed: a message's request
and callbacks come close together.

Even so, a key not seen lately took 7-8 µs on the build machine, about 5% of the engine's thread at
300 k messages (two new keys per message: its id and its provider id; issue 19). `murmur2_many`
hashes many keys at once with numpy, 0.4 µs a key for a batch's keys: the engine places every input
key of a batch (`Placement.prime`) before applying it, and the provider ids it stages when it
commits.
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

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


_M32 = np.uint32(_M)
# Keys of one length hashed as vectors when there are at least this many, of at most this length.
VECTOR_MIN_KEYS = 8
VECTOR_MAX_BYTES = 1024


def murmur2_many(keys: list[bytes]) -> list[int]:
    """`murmur2` of each of `keys`, computed together: the keys of one length at a time, each 4-byte
    word position as one vector operation over all of them (uint32 arithmetic wraps as the masks do)."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    with np.errstate(over="ignore"):
        for length, at in by_length.items():
            if len(at) < VECTOR_MIN_KEYS or length > VECTOR_MAX_BYTES:
                for i in at:  # few keys, or long ones: numpy's cost per operation would dominate
                    out[i] = murmur2(keys[i])
                continue
            data = np.frombuffer(b"".join([keys[i] for i in at]), dtype=np.uint8).reshape(len(at), length)
            h = np.full(len(at), (_SEED ^ length) & _MASK, dtype=np.uint32)
            words = length >> 2
            if words:
                packed = np.ascontiguousarray(data[:, :words * 4]).view("<u4")
                for j in range(words):
                    k = packed[:, j] * _M32
                    k ^= k >> np.uint32(24)
                    k *= _M32
                    h *= _M32
                    h ^= k
            tail, i = length & 3, words << 2
            if tail == 3:
                h ^= data[:, i + 2].astype(np.uint32) << np.uint32(16)
            if tail >= 2:
                h ^= data[:, i + 1].astype(np.uint32) << np.uint32(8)
            if tail:
                h ^= data[:, i].astype(np.uint32)
                h *= _M32
            h ^= h >> np.uint32(13)
            h *= _M32
            h ^= h >> np.uint32(15)
            for i, value in zip(at, h.tolist()):
                out[i] = value
    return out


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

    def prime(self, keys: Iterable[str]) -> None:
        """Place the keys not known yet, together (murmur2_many): a later call for one is a lookup.
        Every key given is then known, so a batch of more than `size` keys (a batch is
        SENDTRACK_ENGINE_BATCH_EVENTS records, 2,000 by default) is kept whole until the next
        unknown key clears the memory."""
        keys = list(dict.fromkeys(keys))
        new = [key for key in keys if key not in self._known]
        if not new:
            return
        if len(self._known) + len(new) > self.size:
            self._known.clear()  # all at once, as __call__ does: then every key of the batch is new
            new = keys
        hashes = murmur2_many([key.encode() for key in new])
        self._known.update(zip(new, [(h & 0x7FFFFFFF) % self.partitions for h in hashes]))
