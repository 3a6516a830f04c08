"""The bench's rate in each fifth of the backlog (bench/run.py `rate_by_fifth`), and the freshness phase
 by second (`BusySampler.by_second`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402


def test_each_fifth_of_the_backlog_gets_the_rate_of_the_samples_inside_it():
    # 1,000 records: 100/s for the first 400 (two fifths), then 50/s to the end.
    rows, t, n = [], 0.0, 0
    while n < 1000:
        rows.append([t, 0, 0, n, 0, 0, 0])
        rate = 100 if n < 400 else 50
        t, n = t + 0.5, n + rate // 2
    rows.append([t, 0, 0, 1000, 0, 0, 0])
    assert run.rate_by_fifth(rows, 1000) == [100, 100, 50, 50, 50]


def test_a_fifth_without_two_samples_has_no_rate():
    rows = [[0.0, 0, 0, 0, 0, 0, 0], [1.0, 0, 0, 150, 0, 0, 0], [2.0, 0, 0, 1000, 0, 0, 0]]
    assert run.rate_by_fifth(rows, 1000) == [150, None, None, None, None]


def test_the_waits_after_the_last_record_do_not_count():
    # Every record applied at 10 s; the bench then waits for the views and its checks.
    rows = [[t, 0, 0, min(100 * t, 1000), 0, 0, 0] for t in range(0, 31)]
    assert run.rate_by_fifth(rows, 1000) == [100, 100, 100, 100, 100]


def test_each_second_of_the_freshness_phase_has_its_waits_and_what_the_worker_did():
    sampler = run.BusySampler.__new__(run.BusySampler)  # its samples only: no worker is polled
    deadline = 'sendtrack_sink_batches_total{ended="deadline"}'
    sampler.samples = [
        (100.2, {deadline: 0, "sendtrack_clickhouse_insert_seconds_sum": 1.0}),
        (101.5, {deadline: 1, "sendtrack_clickhouse_insert_seconds_sum": 1.5}),  # in second 1
        (102.2, {deadline: 1, "sendtrack_clickhouse_insert_seconds_sum": 1.5}),
        (103.1, {deadline: 3, "sendtrack_clickhouse_insert_seconds_sum": 2.0}),  # in second 3
    ]
    # (published, visible, recorded by the engine): seconds 0 and 2 from 100.0
    waits = [(100.1, 100.6, 100.2), (100.5, 100.7, 100.6), (102.9, 104.4, 103.0)]
    got = sampler.by_second(100.0, waits)
    rows = [dict(zip(got["columns"], row)) for row in got["rows"]]
    assert [(r["second"], r["callbacks"], r["p99_s"], r["p99_to_engine_s"]) for r in rows[:3]] \
        == [(0, 2, 0.5, 0.1), (1, 0, None, None), (2, 1, 1.5, 0.1)]
    assert [(r["deadline"], r["insert_s"]) for r in rows[:4]] == [(0, 0), (1, 0.5), (0, 0), (2, 0.5)]
    assert len(rows) == 3 + 5  # and the five seconds after the last publication


class RestoredWorker:
    """A worker as cold_restore sees it: started, healthy, and its /metrics after the rebuild."""

    def __init__(self, restored: dict[str, float]) -> None:
        self.restored = restored
        self.started = False

    def start(self) -> None:
        self.started = True

    def wait_healthy(self, timeout: float) -> None:
        assert self.started

    def metrics(self) -> dict[str, float]:
        return {"sendtrack_records_in_total{topic=\"x\"}": 5.0, **self.restored}


def test_a_cold_restore_reports_the_changelog_records_it_read(tmp_path):
    (tmp_path / "faust").mkdir()
    worker = RestoredWorker({"sendtrack_state_restored_records_total": 12_500_000.0})
    result = run.cold_restore(worker, tmp_path, 0.0, 5_000_000)
    assert not (tmp_path / "faust").exists()
    assert result["restored_records"] == 12_500_000 and result["restored_records_per_message"] == 2.5
    result["seconds_per_million_messages"] = 17.4  # this one took no time at all
    assert run.cold_restore_summary(result) == "17.4 s per million messages (2.5 changelog records per message)"
    # A result kept before the count was read says nothing of it.
    del result["restored_records"], result["restored_records_per_message"]
    assert "changelog" not in run.cold_restore_summary(result)


def test_a_run_records_its_settings_but_never_a_secret():
    environ = {
        "SENDTRACK_ENGINE_BATCH_EVENTS": "5000",
        "SENDTRACK_READERS": "analyst:s3cret",
        "SENDTRACK_ADMINS": "ops:t0psecret",
        "SENDTRACK_SENDGRID_PUBLIC_KEY": "MFkwEwYHKoZIzj0CAQ",
        "SENDTRACK_CLICKHOUSE_URL": "http://writer:pa55@clickhouse:8123/sendtrack",
        "SENDTRACK_CLICKHOUSE_READER_URL": "http://reader:pw@clickhouse:8123",
        "PATH": "/usr/bin",
    }
    recorded = run.recorded_settings(environ)
    text = repr(recorded)
    for secret in ("s3cret", "t0psecret", "MFkwEwYHKoZIzj0CAQ", "pa55", "writer", "reader:pw"):
        assert secret not in text, recorded
    assert recorded["SENDTRACK_CLICKHOUSE_URL"] == "http://***@clickhouse:8123/sendtrack"
    assert recorded["SENDTRACK_ENGINE_BATCH_EVENTS"] == "5000"
    assert "PATH" not in recorded
    # What runs compare is recorded even when left at its default.
    assert recorded["SENDTRACK_GC_YOUNG_THRESHOLD"] == "50000"
    assert recorded["SENDTRACK_BACKGROUND_NICE"] == "10"
