"""The Faust / aiokafka internals agents/faust_adapter.py relies on still exist as it uses them.

After a Faust, aiokafka or mode upgrade, each failing test id names the one internal that changed
and what the adapter uses it for (docs/architecture.md, "The Faust boundary"). The last tests check
that no module but the adapter touches a private name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import rocksdict

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "agents" / "faust_adapter.py"
FRAMEWORKS = ("faust", "aiokafka", "mode", "rocksdict")


def resolve(path: str) -> Any:
    """The object at a dotted path: the longest importable module prefix, then attributes (a class
    attribute is read from the class's __dict__ along its MRO, so a descriptor is returned as is)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if isinstance(obj, type):
                found = next((k.__dict__[name] for k in obj.__mro__ if name in k.__dict__), None)
                if found is None:
                    raise AttributeError(f"{obj.__qualname__} has no attribute {name!r}")
                obj = found
            else:
                obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def function_of(obj: Any) -> Callable:
    """The plain function behind a method, property getter or mode ServiceTask."""
    if isinstance(obj, (staticmethod, classmethod)):
        return obj.__func__
    if isinstance(obj, property):
        return obj.fget
    return getattr(obj, "fun", obj)


def shown(signature: inspect.Signature) -> str:
    """A signature as parameter names, kinds and defaults (annotations are free to change)."""
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def function_ast(function: Callable) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))


def self_attributes(function: Callable, stored: bool) -> set[str]:
    """Names of `self.<name>` the function assigns (stored) or reads (not stored)."""
    wanted = ast.Store if stored else ast.Load
    return {node.attr for node in ast.walk(function_ast(function))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "self" and isinstance(node.ctx, wanted)}


def called_attributes(function: Callable) -> set[str]:
    """Names of `<anything>.<name>(...)` the function calls."""
    return {node.func.attr for node in ast.walk(function_ast(function))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}


@dataclass(frozen=True)
class Internal:
    """One internal the adapter relies on, and how to tell it is still there as used.

    kind: "signature" (expected: the parameters, as `shown` prints them), "sets" (the function
    assigns self.<expected>), "reads" (it reads self.<expected>), "calls" (it calls .<expected>()),
    "attribute" (the class has the attribute <expected>)."""

    path: str
    kind: str
    expected: str
    why: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.kind}:{self.expected}" if self.kind != "signature" else self.path

    def check(self) -> None:
        where = f"{self.path} ({self.why})"
        try:
            obj = resolve(self.path)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{where} is gone: {exc}")
        if self.kind == "attribute":
            assert hasattr(obj, self.expected) or self.expected in getattr(obj, "__annotations__", {}), (
                f"{where} no longer has the attribute {self.expected!r}")
            return
        function = function_of(obj)
        if self.kind == "signature":
            found = shown(inspect.signature(function))
            assert found == self.expected, f"{where} changed its signature: expected {self.expected}, found {found}"
        elif self.kind in ("sets", "reads"):
            names = self_attributes(function, stored=self.kind == "sets")
            assert self.expected in names, (
                f"{where} no longer {'assigns' if self.kind == 'sets' else 'reads'} self.{self.expected}")
        elif self.kind == "calls":
            assert self.expected in called_attributes(function), f"{where} no longer calls .{self.expected}()"
        else:
            raise AssertionError(f"unknown kind {self.kind!r}")


CONSUMER = "faust.transport.consumer.Consumer"
AIOKAFKA_CONSUMER = "faust.transport.drivers.aiokafka.Consumer"
THREAD = "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread"
STORE = "faust.stores.rocksdb.Store"

CONTRACT = [
    # Batch delivery: BatchConsumer replaces Faust's fetch loop and feeds its commit bookkeeping.
    Internal("faust.transport.consumer.Fetcher._fetcher", "calls", "_drain_messages",
             "Faust's fetcher service runs the consumer's fetch loop, which BatchConsumer replaces"),
    Internal(f"{CONSUMER}._drain_messages", "signature", "(self, fetcher)",
             "overridden by BatchConsumer: the fetch loop that hands handlers whole fetches"),
    Internal(f"{CONSUMER}._wait_next_records", "signature", "(self, timeout)",
             "BatchConsumer's fetch: (records per TP, active partitions)"),
    Internal(f"{CONSUMER}._wait_next_records", "calls", "_getmany",
             "still fetches through the consumer thread's getmany"),
    Internal(f"{AIOKAFKA_CONSUMER}._to_message", "signature", "(self, tp, record)",
             "records of topics without a batch handler go to Faust's per-record path"),
    Internal(f"{CONSUMER}.__init__", "sets", "_acked",
             "offsets Faust's per-record path acknowledged; BatchConsumer commits them with its own"),
    Internal(f"{CONSUMER}._filter_tps_with_pending_acks", "signature", "(self, topics=None)",
             "overridden: the partitions with offsets to commit include the batch-handled ones"),
    Internal(f"{CONSUMER}.force_commit", "calls", "_filter_tps_with_pending_acks",
             "Faust's commit asks which partitions have offsets to commit"),
    Internal(f"{CONSUMER}._new_offset", "signature", "(self, tp)",
             "overridden: the offset to commit is one past the last batch-handled record"),
    Internal(f"{CONSUMER}._filter_committable_offsets", "calls", "_new_offset",
             "Faust's commit asks each partition's offset to commit"),
    Internal(f"{CONSUMER}.commit", "signature", "(self, topics=None, start_new_transaction=True)",
             "BatchConsumer commits what it handled before partitions are revoked"),
    Internal(f"{CONSUMER}.on_partitions_revoked", "signature", "(self, revoked)",
             "overridden: revocation waits for the batch in flight and commits it"),
    Internal(f"{CONSUMER}.perform_seek", "signature", "(self)",
             "a fetch made while a rebalance began is dropped and partitions sought to their commits"),
    Internal(CONSUMER, "attribute", "flow_active", "false while a rebalance is under way"),
    Internal(CONSUMER, "attribute", "suspend_flow", "set when a rebalance suspends the per-record path"),
    Internal("faust.types.app.AppT", "attribute", "consumer_generation_id",
             "a batch fetched in an older generation (before a rebalance) is dropped"),
    Internal("mode.Service.__init__", "sets", "_stopped",
             "the fetch loop ends when the consumer or the fetcher service is stopped"),
    Internal(f"{AIOKAFKA_CONSUMER}._new_consumer_thread", "signature", "(self)",
             "overridden: the consumer thread that creates aiokafka's consumer"),
    Internal("faust.transport.consumer.ThreadDelegateConsumer.__init__", "calls", "_new_consumer_thread",
             "Faust creates the consumer thread through it"),
    Internal(f"{THREAD}.__init__", "signature", "(self, consumer, **kwargs)",
             "BatchConsumerThread(consumer, loop=..., beacon=...)"),
    Internal(f"{THREAD}._create_worker_consumer", "signature", "(self, transport)",
             "overridden: aiokafka's consumer, with a shorter long-poll and a smaller fetch"),
    Internal("aiokafka.AIOKafkaConsumer.__init__", "sets", "_fetch_max_wait_ms",
             "the broker's long-poll, set to 100 ms after Faust built the consumer"),
    Internal("aiokafka.AIOKafkaConsumer.__init__", "sets", "_fetch_max_bytes",
             "the bytes per fetch response, set to 8 MiB after Faust built the consumer"),
    Internal("aiokafka.AIOKafkaConsumer.start", "reads", "_fetch_max_wait_ms",
             "the fetcher is built from it when the consumer starts"),
    Internal("aiokafka.AIOKafkaConsumer.start", "reads", "_fetch_max_bytes",
             "the fetcher is built from it when the consumer starts"),
    Internal("faust.transport.drivers.aiokafka.Transport", "attribute", "Consumer",
             "BatchTransport swaps in BatchConsumer"),
    Internal("faust.App._new_transport", "signature", "(self)", "overridden by BatchApp: the batch transport"),
    Internal("faust.App.transport", "calls", "_new_transport", "Faust builds its transport through it"),
    # The table write protocol: one produce round of producer batches, then the stores.
    Internal("faust.transport.drivers.aiokafka.Producer._ensure_producer", "signature", "(self)",
             "aiokafka's producer under Faust's, to send producer batches"),
    Internal("aiokafka.AIOKafkaProducer.create_batch", "signature", "(self)", "a producer batch"),
    Internal("aiokafka.AIOKafkaProducer.send_batch", "signature", "(self, batch, topic, *, partition)",
             "sends a producer batch to one partition; its future gives the first record's offset"),
    Internal("aiokafka.producer.message_accumulator.BatchBuilder.append", "signature",
             "(self, *, timestamp, key, value, headers=[])", "None when the batch is full"),
    Internal(f"{STORE}._db_for_partition", "signature", "(self, partition)",
             "a table partition's RocksDB, opened if needed (writes, re-staging)"),
    Internal(f"{STORE}.__init__", "sets", "_dbs", "the open RocksDBs per partition (the sweep's scans)"),
    Internal(STORE, "attribute", "offset_key", "where Faust keeps a partition's changelog offset"),
    Internal(f"{STORE}.revoke_partitions", "signature", "(self, table, tps)",
             "agents/store.py ends a restoring partition's bulk load here before Faust drops its database"),
    Internal(f"{STORE}.persisted_offset", "signature", "(self, tp)",
             "what Faust's recovery reads back from the offset written with a batch's writes"),
    Internal("faust.tables.base.Collection.changelog_topic", "reads", "_changelog_topic",
             "the changelog topic is built lazily from the table's serializers"),
    Internal("faust.tables.base.Collection.__init__", "sets", "_changelog_topic",
             "reset_changelog clears it so the topic is built again with sendtrack's serializers"),
    Internal("faust.serializers.codecs.Codec._dumps", "signature", "(self, s)", "register_codec's encoder"),
    Internal("faust.serializers.codecs.Codec._loads", "signature", "(self, s)", "register_codec's decoder"),
    Internal("faust.serializers.codecs.Codec.dumps", "calls", "_dumps", "a codec encodes through _dumps"),
    Internal("faust.serializers.codecs.Codec.loads", "calls", "_loads", "a codec decodes through _loads"),
    # Bulk restore: a recovering changelog partition's records are written straight to its RocksDB.
    Internal("faust.tables.manager.TableManager", "attribute", "recovery", "the tables' recovery service"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "active_highwaters",
             "the last offset of each active changelog partition, read when recovery begins"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "active_offsets",
             "the last changelog offset applied per partition; restore_bulk advances it"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "tp_to_table",
             "which table a changelog partition restores"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "active_tps",
             "the changelog partitions of the tables this worker owns"),
    Internal("faust.tables.recovery.Recovery.need_recovery", "calls", "active_remaining",
             "recovery ends when every active partition's offset reached its highwater"),
    Internal("faust.tables.recovery.Recovery.active_remaining", "reads", "active_offsets",
             "the offsets restore_bulk advances are the ones recovery's end is judged on"),
    Internal("faust.tables.recovery.Recovery._slurp_changelogs", "reads", "active_offsets",
             "Faust's per-record path skips records at or below the offset restore_bulk reached"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "_active_events_received_at",
             "restore_bulk notes an event per partition it writes, as Faust's path does"),
    Internal("faust.tables.recovery.Recovery._verify_remaining", "reads", "_last_flush_at",
             "restore_bulk's writes count as a flush: Faust warns while none happened"),
    Internal("faust.tables.recovery.Recovery._set_recovery_started", "sets", "_recovery_started_at",
             "the restore's progress log starts over with each recovery"),
    Internal(f"{STORE}.apply_changelog_batch", "signature", "(self, batch, to_key, to_value)",
             "restore_bulk writes what it writes: raw key and value, None deletes, and the offset"),
    # Public names of Faust's internals used outside the adapter.
    Internal("faust.stores.rocksdb.RocksDBOptions.__init__", "signature",
             "(self, max_open_files=None, write_buffer_size=None, max_write_buffer_number=None, "
             "target_file_size_base=None, block_cache_size=None, block_cache_compressed_size=None, "
             "bloom_filter_size=None, use_rocksdict=None, ttl=None, **kwargs)",
             "agents/store.py rebuilds Faust's RocksDB options on the shared memory budget"),
    Internal("faust.stores.rocksdb.RocksDBOptions.as_options", "signature", "(self)",
             "agents/store.py adds the shared block cache and write buffer manager"),
    Internal("faust.tables.recovery.Recovery.__init__", "sets", "completed",
             "agents/web.py: the engine is ready once table recovery completed"),
    Internal("faust.tables.recovery.Recovery", "attribute", "in_recovery", "agents/web.py: readiness"),
    Internal("faust.types.app.AppT", "attribute", "rebalancing", "agents/web.py: readiness"),
]


@pytest.mark.parametrize("internal", CONTRACT, ids=[i.id for i in CONTRACT])
def test_the_internal_is_as_the_adapter_uses_it(internal: Internal) -> None:
    internal.check()


def test_the_offset_a_batch_writes_is_the_one_fausts_recovery_reads(tmp_path):
    """write_partition records the changelog offset as Faust's set_persisted_offset would: Faust's
    persisted_offset reads it back, and the sweep's scans see the same database."""
    from faust.stores.rocksdb import Store
    from faust.types import TP

    from agents.faust_adapter import offset_key, open_db, table_db, write_partition

    db = rocksdict.Rdict(str(tmp_path / "p0"), rocksdict.Options(raw_mode=True))
    try:
        store = Store.__new__(Store)  # Faust's store without an app: only its RocksDB handles
        store._dbs = {0: db}
        table = SimpleNamespace(name="t", data=store)
        write_partition(table, 0, [(b"a", b"1"), (b"b", b"2"), (b"a", None)], 41)
        assert store.persisted_offset(TP("t-changelog", 0)) == 41, \
            "Faust's persisted_offset does not read the offset write_partition recorded"
        assert offset_key(table) == Store.offset_key
        assert table_db(table, 0) is db and open_db(table, 0) is db and open_db(table, 1) is None
        assert db.get(b"a") is None and db.get(b"b") == b"2"
    finally:
        db.close()


def test_reset_changelog_rebuilds_the_topic_with_the_tables_serializers():
    import faust

    from agents.faust_adapter import reset_changelog

    app = faust.App("contract-test", broker="kafka://localhost:9", store="memory://")
    table = app.Table("contract", partitions=1)
    assert table.changelog_topic.value_serializer != "orjson"
    table.value_serializer = "orjson"
    assert reset_changelog(table).value_serializer == "orjson", \
        "Faust no longer builds the changelog topic again after _changelog_topic is cleared"
    assert table.changelog_topic.value_serializer == "orjson"


def test_a_registered_codec_encodes_and_decodes_through_the_functions():
    import orjson
    from faust.serializers import codecs

    from agents.faust_adapter import register_codec

    register_codec("contract-test-json", orjson.dumps, orjson.loads)
    codec = codecs.get_codec("contract-test-json")
    assert codec.dumps({"a": [1]}) == b'{"a":[1]}'
    assert codec.loads(b'{"a":[1]}') == {"a": [1]}


# ---------------------------------------------------------------------------------------------
# Nowhere but the adapter touches a private name


SCANNED = ("agents", "sendtrack", "sinks", "schemas")
# Public despite the underscore: namedtuple's API, and os._exit.
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_field_defaults", "_make", "_exit"}
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORED


def modules_outside_the_adapter() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20 and ADAPTER.exists()
    return [p for p in files if p != ADAPTER]


def private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Private names touched on anything but self/cls, or imported from a framework."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, f".{node.attr} on {ast.unparse(owner)}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and private(node.args[1].value)):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FRAMEWORKS:
            if any(private(part) for part in node.module.split(".")):
                found.append((node.lineno, f"from {node.module} import ..."))
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in FRAMEWORKS and any(private(p) for p in a.name.split("."))]
    return found


def test_no_module_but_the_adapter_touches_a_private_name():
    uses = [f"{path.relative_to(ROOT)}:{line}: {what}"
            for path in modules_outside_the_adapter()
            for line, what in private_uses(ast.parse(path.read_text(), str(path)))]
    assert not uses, "private names outside agents/faust_adapter.py (move them behind it):\n" + "\n".join(uses)


def framework_privates(cls: type) -> set[str]:
    """Private names a class inherits from Faust, aiokafka or mode: in their classes' namespaces,
    annotations, or assigned to self in their methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in FRAMEWORKS:
            continue
        names |= {n for n in (*vars(klass), *getattr(klass, "__annotations__", {})) if private(n)}
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id == "self" and private(n.attr)}
    return names


def test_no_subclass_outside_the_adapter_uses_or_overrides_a_private_framework_name():
    """A class outside the adapter that extends a Faust/aiokafka/mode class (a mode Service, a
    Faust store or view) uses none of its base's private names through self, nor overrides one."""
    uses = []
    for path in modules_outside_the_adapter():
        tree = ast.parse(path.read_text(), str(path))
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        if not classes:
            continue
        module = importlib.import_module(module_name)
        for node in classes:
            inherited = framework_privates(getattr(module, node.name))
            if not inherited:
                continue
            touched = {(n.lineno, f"self.{n.attr}") for n in ast.walk(node) if isinstance(n, ast.Attribute)
                       and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr in inherited}
            touched |= {(n.lineno, f"def {n.name}") for n in node.body
                        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in inherited}
            uses += [f"{path.relative_to(ROOT)}:{line}: {node.name}: {what}" for line, what in sorted(touched)]
    assert not uses, "framework private names outside agents/faust_adapter.py:\n" + "\n".join(uses)


def test_the_scan_finds_what_it_is_meant_to_find():
    """The scans are not vacuous: each kind of private use in a sample is reported."""
    sample = textwrap.dedent('''
        from faust.streams import _current_event
        import faust._private
        table.data._dbs
        getattr(table.data, "_dbs", {})
        parts._replace(netloc="x")
        self._mine = cls._also_mine
        os._exit(70)
    ''')
    found = sorted(what for _, what in private_uses(ast.parse(sample)))
    assert found == sorted(["from faust.streams import _current_event", "import faust._private",
                            "._dbs on table.data", "getattr(..., '_dbs')"])
    from faust.transport.drivers.aiokafka import Consumer
    assert {"_acked", "_drain_messages", "_new_offset", "_stopped"} <= framework_privates(Consumer)
