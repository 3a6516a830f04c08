"""sendtrack/partitions.py places keys exactly where Kafka's default partitioner does."""

import os
import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from sendtrack.partitions import VECTOR_MAX_BYTES, VECTOR_MIN_KEYS, Placement, murmur2, murmur2_many, partition


def test_murmur2_equals_aiokafka_on_every_length_and_random_bytes():
    rnd = random.Random(7)
    for length in range(0, 70):
        for _ in range(200):
            data = bytes(rnd.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data), data
    for _ in range(2000):
        data = os.urandom(rnd.randrange(0, 300))
        assert murmur2(data) == aiokafka_murmur2(data), data


def test_known_values_of_the_java_client():
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2 (signed there; unsigned here).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


def test_placement_remembers_and_forgets_without_changing_an_answer():
    place = Placement(8, size=50)
    keys = [f"msg-{i}" for i in range(500)]
    for _ in range(3):
        for key in keys:
            assert place(key) == partition(key.encode(), 8)
            assert len(place._known) <= 50
    assert place("é-unicode") == partition("é-unicode".encode(), 8)


def test_murmur2_many_equals_aiokafka_for_groups_of_every_length():
    """Keys hashed together (vectors per length, with the scalar path for few or long keys) get
    what aiokafka's murmur2 gives each alone, in the order given."""
    rnd = random.Random(11)
    keys = [os.urandom(length) for length in range(0, 70) for _ in range(VECTOR_MIN_KEYS + 3)]
    keys += [os.urandom(rnd.randrange(0, 300)) for _ in range(500)]  # most lengths few times: scalar
    keys += [os.urandom(VECTOR_MAX_BYTES + 1)] * VECTOR_MIN_KEYS + [b"\xff" * 64] * 20
    rnd.shuffle(keys)
    assert murmur2_many(keys) == [aiokafka_murmur2(key) for key in keys]
    assert murmur2_many([]) == []


def test_a_primed_placement_answers_as_partition_and_stays_bounded():
    place = Placement(8, size=300)
    for start in (0, 250, 900):
        keys = [f"msg-{i}" for i in range(start, start + 200)] + ["é-unicode", "msg-3", "msg-3"]
        place.prime(keys)
        assert len(place._known) <= 300
        assert all(key in place._known for key in keys)
        assert all(place(key) == partition(key.encode(), 8) for key in keys)
    place.prime([])
