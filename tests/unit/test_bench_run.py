"""The bench's rate in each fifth of the backlog (bench/run.py `rate_by_fifth`)."""

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
