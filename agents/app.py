"""The one Faust app of sendtrack, its topics and tables."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import faust
import orjson

from agents import store
from agents.faust_adapter import BatchApp, register_codec, reset_changelog
from sendtrack.settings import get_settings
from sendtrack.topics import RECORD_MAX_BYTES, ensure_topics

settings = get_settings()
F = TypeVar("F", bound=Callable)
store.configure(settings.state_memory_mb, settings.restore_memory_mb, settings.state_compression)


# JSON through orjson: table state is plain dicts and lists.
register_codec("orjson", orjson.dumps, orjson.loads)

# Faust and aiokafka log every produced record at DEBUG; building those records costs ~9% of the
# hot path even when they are filtered later.
for _name in ("aiokafka", "faust", "mode"):
    logging.getLogger(_name).setLevel(logging.WARNING)

class SendtrackApp(BatchApp):
    """The Faust app (its consumer hands the handlers whole fetches: agents/faust_adapter.py);
    creates the topics (co-partitioned) before any agent subscribes."""

    async def on_first_start(self) -> None:
        (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
        await ensure_topics(settings, [t.changelog_topic.get_topic_name() for t in self.tables.values()])
        await super().on_first_start()


# A worker without the engine (SENDTRACK_ENGINE_ENABLED=false: the sink, the readers, the alerts)
# has no agents and no tables, and its Faust app a name of its own: it must never join the engine's
# consumer group (settings.app_id), where it would be given input partitions it does not read. The
# sink's group and every topic name still come from settings.app_id and the topic prefix.
FAUST_APP_ID = settings.app_id if settings.engine_enabled else f"{settings.app_id}-sink-worker"

app = SendtrackApp(
    FAUST_APP_ID,
    broker=f"kafka://{settings.kafka_broker}",
    store="sendtrack-rocksdb://",  # agents/store.py: one memory budget for all tables
    datadir=str((settings.data_dir / "faust").resolve()),
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    topic_allow_declare=True,
    key_serializer="raw",
    value_serializer="raw",
    web_port=settings.web_port,
    # Faust's own /table and /router pages serve stored state (recipients) to anyone: off.
    web_tables_enabled=False,
    web_router_enabled=False,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    # Records per fetch: the batch the engine applies with one round of produce, then table writes.
    broker_max_poll_records=settings.engine_batch_events,
    stream_buffer_maxsize=32768,
    # Per partition and fetch: 2 MiB is over 2,000 records of any input topic; 16 MiB per partition let
    # prefetched fetches hold hundreds of MB under a backlog.
    consumer_max_fetch_size=2 * 1024 * 1024,
    consumer_auto_offset_reset="earliest",
    # One worker per group member: standbys would double the changelog reads on 2 cores.
    table_standby_replicas=0,
    # A member that died (SIGKILL) is noticed after this, and its partitions move to the others.
    broker_session_timeout=10,
    broker_heartbeat_interval=3,
    producer_linger_ms=5,
    # A producer batch (several records of one partition) is at most the internal and changelog
    # topics' max.message.bytes; a single record in it fits as well (sendtrack/topics.py).
    producer_max_batch_size=RECORD_MAX_BYTES,
    producer_acks=-1,
    # Webhook requests are published whole (base64); their topic accepts records of this size. This
    # bounds only single-record sends (aiokafka checks it in send(), not in send_batch()): it is no
    # bound on the engine's batches, which stay under RECORD_MAX_BYTES by construction.
    producer_max_request_size=4 * 1024 * 1024,
    autodiscover=["agents"],
    origin="agents",
)
# RocksDB through rocksdict (faust #469: far faster than python-rocksdb). Faust's defaults (a 2 GB
# block cache, 64 MB write buffers) are per table and partition; agents/store.py replaces the cache
# and bounds the memtables with one budget for all of them (SENDTRACK_STATE_MEMORY_MB). A memtable is
# flushed at 4 MB, or earlier when the budget is reached. Reads that miss the block cache are served
# from the OS page cache, which is not the worker's RSS.
ROCKSDB_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": store.NORMAL_WRITE_BUFFER,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
}


def engine_only(decorator: Callable[[F], F]) -> Callable[[F], F]:
    """`decorator` (an agent's, a timer's) in a worker that runs the engine; in a sink-only worker
    the function stays undecorated: nothing subscribes to the inputs, nothing ticks."""
    return decorator if settings.engine_enabled else (lambda function: function)


def _topic(name: str, **kwargs: object) -> faust.TopicT:
    return app.topic(
        settings.topic(name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        **kwargs,
    )


send_requests_topic = _topic("send-requests")
callbacks_topic = _topic("provider-callbacks")
status_changes_topic = _topic("status-changes")
dead_letters_topic = _topic("dead-letters")
webhooks_topic = _topic("provider-webhooks")
# Internal: records re-keyed by message id (callbacks resolved from a provider id, records that
# arrived on the wrong partition, sweep ticks), and records keyed by provider message id.
routed_topic = _topic("sendtrack-routed", internal=True)
by_provider_id_topic = _topic("sendtrack-by-provider-id", internal=True)

CONTRACT_TOPICS = (send_requests_topic, callbacks_topic, status_changes_topic, dead_letters_topic,
                   webhooks_topic)


def _table(name: str, help: str) -> faust.TableT:
    table = app.Table(name, partitions=settings.partitions, help=help, options=dict(ROCKSDB_OPTIONS))
    # Faust derives serializers from key_type/value_type (json unless a Record); ours are raw keys
    # and orjson values. The changelog topic is built from them, so set them before it exists:
    # recovery decodes with the topic's serializers.
    table.key_serializer = "raw"
    table.value_serializer = "orjson"
    changelog = reset_changelog(table)
    assert changelog.value_serializer == "orjson"
    return table


if settings.engine_enabled:
    messages_table = _table("messages", "message_id -> status state (sendtrack.state.MessageState)")
    held_index = _table("held-index", "message_id -> when its first callback was held (orphan TTL)")
    provider_ids_table = _table("provider-ids", "provider\\x1fprovider_message_id -> [message_id, touched_at]")
    provider_held_table = _table("provider-held", "provider id -> callbacks waiting for their mapping")
    messenger_recipients = _table(
        "messenger-recipients",
        "messenger\\x1fPSID -> {msgs: [[message_id, requested_at, statuses applied]], marks: {status: [watermark, event_id]}}",
    )
else:  # a sink-only worker holds no engine state (agents/engine.py registers nothing then)
    messages_table = held_index = provider_ids_table = provider_held_table = messenger_recipients = None
