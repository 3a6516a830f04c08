"""The one settings object: every SENDTRACK_ environment variable, read once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sendtrack.auth import Readers


# Hours within which a provider's receipt (an outcome past "sent" / "processing") is expected, per
# action; a message past it without one is "unconfirmed" (docs/contract.md, the unconfirmed view).
# 0 = no receipt is expected (a timer only ever reports "sent").
RECEIPT_EXPECTED_HOURS: dict[str, float] = {
    "email": 24, "zalo_oa": 24, "zns": 72, "messenger": 24, "sms": 72, "ai_call": 2, "http_request": 1,
    "timer": 0, "voucher": 24, "sync": 1, "start_flow": 1, "other": 24,
}


# Deliverability health (the deliverability_health view): a rate's warning and critical thresholds,
# in percent. Amazon SES reviews an account at 5 % bounces and 0.1 % complaints and may pause it at
# 10 %; Gmail and Yahoo require bulk senders to stay under 0.3 % spam reports, the critical one here
# (SES's pause is at 0.5 %). Failures and unsubscribes have no provider's figure: these are ours.
# Bounce and failure rates are over the messages requested, complaint and unsubscribe rates over the
# messages delivered, as in the recipients report.
HEALTH_THRESHOLDS: dict[str, tuple[float, float]] = {
    "bounce": (5, 10), "complaint": (0.1, 0.3), "failure": (10, 20), "unsubscribe": (0.5, 1),
}


def _overrides(text: str, setting: str, known: dict, kind: str):
    """The `name:value` items of a comma-separated override setting, as (name, value, item); an
    unknown or repeated name is refused."""
    seen = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        name = name.strip()
        if name not in known:
            raise ValueError(f"{setting}: unknown {kind} {name!r} (one of {', '.join(known)})")
        if name in seen:
            raise ValueError(f"{setting}: {name!r} is given twice")
        seen.add(name)
        yield name, value, item


class Settings(BaseSettings):
    """Settings of the worker, the CLI and the tests (CONTRACT §5)."""

    model_config = SettingsConfigDict(env_prefix="SENDTRACK_", extra="ignore", frozen=True)

    kafka_broker: str = "localhost:9092"
    # '' = embedded ClickHouse (chDB) under data_dir; chdb:///abs/path; http(s)://user:pw@host:port/db
    clickhouse_url: str = ""
    clickhouse_database: str = "sendtrack"
    # A ClickHouse server's read-only analysts' user for readers' SQL (docker/clickhouse-users.xml);
    # empty = the sink's URL, still on readonly sessions with the query limits.
    clickhouse_reader_url: str = Field(default="", repr=False)
    data_dir: Path = Path("./data")
    topic_prefix: str = ""
    app_id: str = "sendtrack"
    partitions: int = Field(default=8, ge=1)
    orphan_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    state_retention_days: float = Field(default=30, gt=0)
    # How often each partition is swept for expired held callbacks and evicted state.
    sweep_interval_seconds: float = Field(default=60, gt=0)
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    # ClickHouse's HTTP interface over the analysts' read-only sessions (docs/clickhouse-http.md); 0 = off.
    clickhouse_http_port: int = Field(default=8123, ge=0, le=65535)
    clickhouse_http_host: str = "127.0.0.1"
    # A second listener that serves only /webhooks/<provider>, for a public address, while the web
    # port above (readers, metrics) stays private. 0 = webhooks only on the web port.
    webhook_port: int = Field(default=0, ge=0, le=65535)
    webhook_host: str = "0.0.0.0"
    # Readers of customer data (reports, SQL, the dashboard): "name:password" pairs, comma-separated
    # (docs/security.md). Empty = the reading endpoints answer loopback clients only.
    readers: str = Field(default="", repr=False)
    # Readers limited to one workspace: "name=workspace" pairs, comma-separated, each a reader of
    # SENDTRACK_READERS. They see only that workspace's rows, in reports, SQL and the dashboard
    # (docs/security.md, "Workspaces"). Readers not named here see every workspace.
    reader_workspaces: str = ""
    # Admins: "name:password" pairs like the readers'. Only they may erase a customer through the
    # API (POST /admin/erase; `sendtrack erase` presents the first pair). Empty = no erasure by API.
    admins: str = Field(default="", repr=False)
    # Hard limits on every analyst query (/query, /reports, the ClickHouse HTTP interface), set as
    # ClickHouse settings under readonly=1 so that the query cannot lift them.
    query_max_seconds: float = Field(default=30.0, gt=0)
    query_max_result_rows: int = Field(default=100_000, ge=1)
    query_max_result_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    query_max_rows_to_read: int = Field(default=2_000_000_000, ge=1)
    # Analyst queries that may run at once (each on its own thread and ClickHouse session).
    query_concurrency: int = Field(default=2, ge=1)
    # Plausible event times (requested_at, occurred_at): older than this or further ahead than this
    # is dead-lettered as invalid_value.
    time_max_age_days: float = Field(default=730, gt=0)
    time_max_ahead_seconds: float = Field(default=86_400, ge=0)
    # Sink batching: flush at this many rows or this many seconds, whichever comes first.
    # The ClickHouse sink runs in the worker; extra engine-only workers can turn it off (embedded
    # ClickHouse is one per process, so a second worker on one machine would write to another copy).
    sink_enabled: bool = True
    # The status engine (its agents, tables and sweeps) runs in the worker. `false` makes a worker of
    # the sink, the readers and the alerts only, beside engine-only workers (SENDTRACK_SINK_ENABLED=
    # false): the two then share the machine's cores instead of one process's event loop.
    engine_enabled: bool = True
    sink_batch_rows: int = Field(default=20_000, ge=1)
    sink_batch_seconds: float = Field(default=1.0, gt=0)
    # …or, once the sink has read everything there is, after this many and three times the last
    # insert (agents/sink.py: short batches under a steady load, large ones while a backlog drains).
    sink_caught_up_seconds: float = Field(default=0.25, gt=0)
    # Deliverability alerts (agents/alerts.py): the rates are judged again after the sink's inserts,
    # at most this often (and at most a tenth of a core); 0 = no alerts are published.
    alert_interval_seconds: float = Field(default=5.0, ge=0)
    sink_retry_max_seconds: float = Field(default=30.0, gt=0)
    # Engine batching (events per take() batch, seconds to wait for a batch to fill).
    engine_batch_events: int = Field(default=2000, ge=1)
    # Memory for the tables' RocksDB databases together (half memtables, half block cache); reads
    # beyond it come from the OS page cache, outside the worker's RSS.
    state_memory_mb: int = Field(default=64, ge=16)
    # How RocksDB compresses the state's files (agents/store.py): lz4 decompresses a block read from
    # the page cache faster than snappy at the same size on disk; none saves the compactions'
    # compression for about 2.8 times the disk; zstd (not measured) should take less disk for more
    # CPU. Files already written keep theirs.
    state_compression: Literal["lz4", "snappy", "zstd", "none"] = "lz4"
    # How much nicer than the worker its background threads run (RocksDB's compactions, embedded
    # ClickHouse's merges; sendtrack/threads.py): they yield the CPU to the event loop. 0 = as is.
    background_nice: int = Field(default=10, ge=0, le=19)
    # New container objects (net) between collections of Python's youngest generation (sendtrack/memory.py,
    # tune_collector): batches keep tens of thousands alive, which at Python's 700 all reach the
    # oldest generation and its full collections (11.6% of a backlog at 700, 2.0% at 50,000:
    # docs/performance.md). 0 = Python's own thresholds.
    gc_young_threshold: int = Field(default=50_000, ge=0, le=1_000_000)
    # Memtables of the tables being restored from their changelogs after the local state was lost
    # (only while a restore runs): large memtables keep RocksDB from rewriting the data many times.
    restore_memory_mb: int = Field(default=256, ge=16)
    # Memory one analyst query (/query, /reports, `sendtrack report`) may use; GROUP BY and ORDER BY
    # spill to disk past half of it. 0 = no limit.
    query_memory_mb: int = Field(default=256, ge=0)
    # Embedded ClickHouse: no new merge starts while merges hold more than this.
    merge_memory_mb: int = Field(default=256, ge=16)
    max_payload_bytes: int = Field(default=1_000_000, ge=1024)
    # Retention (docs/retention.md). ClickHouse: days a table keeps its rows, 0 = forever.
    retention_days: int = Field(default=730, ge=0)  # a customer's rows, from requested_at
    aggregate_retention_days: int = Field(default=1095, ge=0)  # funnel counts, from their day
    dead_letter_retention_days: int = Field(default=30, ge=0)  # dead letters and their payloads
    # Kafka: retention.ms of the topics sendtrack creates (the changelogs are compacted instead).
    topic_retention_days: float = Field(default=7, gt=0)
    webhook_retention_hours: float = Field(default=72, gt=0)  # provider-webhooks: raw bodies
    # Overrides of RECEIPT_EXPECTED_HOURS, e.g. "sms:48,email:12".
    receipt_expected_hours: str = ""
    # Overrides of HEALTH_THRESHOLDS, warning/critical in percent, e.g. "bounce:4/8,complaint:0.08/0.3".
    health_thresholds: str = ""
    # A rate is judged only over at least this many messages (requested, or delivered for complaints
    # and unsubscribes): 1 bounce in 3 sends is not an alert.
    health_min_messages: int = Field(default=100, ge=1, le=2**63 - 1)
    log_level: str = "warn"

    # Provider webhook secrets (docs/providers.md). Unset = that provider's webhook is refused.
    sendgrid_public_key: str = Field(default="", repr=False)
    ses_sns_certificate: str = Field(default="", repr=False)
    # Required with the certificate: AWS signs every account's topics with the same one.
    ses_topic_arn: str = ""
    mailgun_signing_key: str = Field(default="", repr=False)
    zalo_oa_secret_key: str = Field(default="", repr=False)
    zalo_app_secret: str = Field(default="", repr=False)
    messenger_app_secret: str = Field(default="", repr=False)
    messenger_verify_token: str = Field(default="", repr=False)
    esms_token: str = Field(default="", repr=False)
    twilio_auth_token: str = Field(default="", repr=False)
    retell_api_key: str = Field(default="", repr=False)
    # The public base URL providers call, e.g. https://hooks.example.vn. Twilio signs the URL it called;
    # unset = Twilio webhooks are refused (the request's Host header is never trusted for it).
    webhook_public_url: str = ""

    @model_validator(mode="after")
    def _does_something(self) -> "Settings":
        if not (self.engine_enabled or self.sink_enabled):
            raise ValueError("SENDTRACK_ENGINE_ENABLED and SENDTRACK_SINK_ENABLED are both false: "
                             "such a worker would do nothing")
        return self

    @model_validator(mode="after")
    def _retention_outlives_orphans(self) -> "Settings":
        # Held callbacks live in the message state: evicting it first would drop them silently.
        if self.state_retention_days * 86_400 <= self.orphan_ttl_seconds:
            raise ValueError(
                f"SENDTRACK_STATE_RETENTION_DAYS ({self.state_retention_days}) must be longer than "
                f"SENDTRACK_ORPHAN_TTL_SECONDS ({self.orphan_ttl_seconds} s)"
            )
        return self

    @model_validator(mode="after")
    def _accepted_events_outlive_the_next_merge(self) -> "Settings":
        for name, days in (("RETENTION_DAYS", self.retention_days),
                           ("AGGREGATE_RETENTION_DAYS", self.aggregate_retention_days)):
            if days and days < self.time_max_age_days:
                raise ValueError(
                    f"SENDTRACK_{name} ({days}) is shorter than SENDTRACK_TIME_MAX_AGE_DAYS "
                    f"({self.time_max_age_days:g}): events the engine accepts would be deleted by ClickHouse at "
                    "the next merge. Lower SENDTRACK_TIME_MAX_AGE_DAYS too, or keep the retention (docs/retention.md)")
        return self

    @model_validator(mode="after")
    def _overrides_parse(self) -> "Settings":
        # Raise on a bad value at start rather than at first use.
        self.receipt_hours  # noqa: B018
        self.health_limits  # noqa: B018
        Readers(self.readers, workspaces=self.reader_workspaces)
        return self

    @property
    def receipt_hours(self) -> dict[str, float]:
        """Hours to a provider's receipt per action: the defaults with SENDTRACK_RECEIPT_EXPECTED_HOURS over them."""
        hours = dict(RECEIPT_EXPECTED_HOURS)
        for action, value, item in _overrides(self.receipt_expected_hours, "SENDTRACK_RECEIPT_EXPECTED_HOURS",
                                              hours, "action"):
            try:
                hours[action] = float(value)
            except ValueError:
                raise ValueError(f"SENDTRACK_RECEIPT_EXPECTED_HOURS: {item!r} is not action:hours") from None
            if not 0 <= hours[action] <= 24 * 366:  # also refuses nan and inf
                raise ValueError(f"SENDTRACK_RECEIPT_EXPECTED_HOURS: hours must be from 0 to 8784 (a year) in {item!r}")
        return hours

    @property
    def health_limits(self) -> dict[str, tuple[float, float]]:
        """Warning and critical thresholds per rate, as fractions (0.05 = 5 %): HEALTH_THRESHOLDS with
        SENDTRACK_HEALTH_THRESHOLDS over them."""
        percent = dict(HEALTH_THRESHOLDS)
        for metric, value, item in _overrides(self.health_thresholds, "SENDTRACK_HEALTH_THRESHOLDS", percent, "rate"):
            warning, slash, critical = value.partition("/")
            try:
                if not slash:
                    raise ValueError
                percent[metric] = (float(warning), float(critical))
            except ValueError:
                raise ValueError(f"SENDTRACK_HEALTH_THRESHOLDS: {item!r} is not rate:warning/critical "
                                 "(percent, e.g. bounce:5/10)") from None
            if not 0 < percent[metric][0] <= percent[metric][1] <= 100:  # also refuses nan and inf
                raise ValueError(f"SENDTRACK_HEALTH_THRESHOLDS: in {item!r} the warning must be above 0 and "
                                 "at most the critical, and the critical at most 100 (percent)")
        # Rounded: 0.07 / 100 is 0.0007000000000000001, which 7 events in 10,000 would not reach.
        return {metric: (round(w / 100, 12), round(c / 100, 12)) for metric, (w, c) in percent.items()}

    def topic(self, name: str) -> str:
        """The full name of one of the contract's topics."""
        return f"{self.topic_prefix}{name}"

    @property
    def embedded_clickhouse_path(self) -> Path:
        """Where the embedded engine keeps its data when no server URL is set."""
        if self.clickhouse_url.startswith("chdb://"):
            return Path(self.clickhouse_url[len("chdb://"):])
        return (self.data_dir / "clickhouse").resolve()

    @property
    def clickhouse_is_embedded(self) -> bool:
        return not self.clickhouse_url.startswith(("http://", "https://"))


class SettingsError(ValueError):
    """Settings the process cannot start with: each wrong setting and why, and never a value (the
    values include readers' and admins' passwords and providers' secrets)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built once from the environment."""
    try:
        return Settings()
    except ValidationError as exc:
        # pydantic's own text shows the input, which for a model check is every setting's value.
        wrong = [f"{'SENDTRACK_' + str(e['loc'][0]).upper() if e['loc'] else 'settings'}: {e['msg']}"
                 for e in exc.errors(include_input=False, include_url=False)]
        raise SettingsError("; ".join(wrong)) from None
