"""Histograms in /metrics: cumulative buckets, sum and count, as Prometheus expects them."""

from sendtrack.metrics import SECONDS_BUCKETS, Metrics


def test_histogram_buckets_are_cumulative_and_bounds_inclusive():
    m = Metrics()
    for seconds in (0.001, 0.5, 0.5000001, 3.0, 60.0):
        m.observe("batch_seconds", seconds)
    h = m.histogram("batch_seconds")
    assert h["count"] == 5 and abs(h["sum"] - 64.0010001) < 1e-9
    assert h["0.005"] == 1
    assert h["0.5"] == 2          # a bound holds the values equal to it (le = less or equal)
    assert h["1.0"] == 3 and h["5.0"] == 4 and h["10.0"] == 4
    assert h["+Inf"] == 5
    counts = [h[str(b)] for b in SECONDS_BUCKETS] + [h["+Inf"]]
    assert counts == sorted(counts)


def test_histogram_renders_buckets_sum_and_count():
    m = Metrics()
    m.observe("insert_seconds", 0.2)
    text = m.render()
    assert "# TYPE sendtrack_insert_seconds histogram" in text
    assert 'sendtrack_insert_seconds_bucket{le="0.1"} 0' in text
    assert 'sendtrack_insert_seconds_bucket{le="0.25"} 1' in text
    assert 'sendtrack_insert_seconds_bucket{le="+Inf"} 1' in text
    assert "sendtrack_insert_seconds_count 1" in text


def test_an_unobserved_histogram_is_empty():
    assert Metrics().histogram("never")["count"] == 0


def test_large_counters_and_sums_are_rendered_exactly():
    # Six significant digits ("%g") made a counter of 15,981,674 records "1.59817e+07": a rate over
    # a few seconds of it was off by up to 50 records, and a histogram's sum after hours lost its
    # milliseconds.
    m = Metrics()
    m.inc("records_in_total", 15_981_674, topic="t")
    m.set("resident_bytes", 1_083_179_008)
    for _ in range(3):
        m.observe("batch_seconds", 1234.5678)
    m.observe("small_seconds", 0.1)
    text = m.render()
    assert 'sendtrack_records_in_total{topic="t"} 15981674\n' in text
    assert "sendtrack_resident_bytes 1083179008\n" in text
    assert float(next(line for line in text.splitlines() if line.startswith("sendtrack_batch_seconds_sum ")).split()[1]) \
        == sum([1234.5678] * 3)  # exactly the sum kept
    assert "sendtrack_small_seconds_sum 0.1\n" in text
