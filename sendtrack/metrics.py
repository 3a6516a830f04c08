"""Process-wide counters and gauges, rendered as Prometheus text for /metrics."""

from __future__ import annotations

import bisect
from collections import defaultdict

# Histogram bounds for durations, in seconds (the freshness target is 2 s).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


def _key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A series' key: its name and sorted label pairs (some are counted for every record: no sort
    for none or one label)."""
    return name, (tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))


class Metrics:
    """Counters and gauges keyed by name and sorted label pairs."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # name -> [bucket counts (one per bound, then +Inf), sum, count]
        self._histograms: dict[str, list] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counters[_key(name, labels)] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[_key(name, labels)] = value

    def observe(self, name: str, seconds: float) -> None:
        """Add a duration to a histogram with the buckets in SECONDS_BUCKETS."""
        h = self._histograms.get(name)
        if h is None:
            h = self._histograms[name] = [[0] * (len(SECONDS_BUCKETS) + 1), 0.0, 0]
        h[0][bisect.bisect_left(SECONDS_BUCKETS, seconds)] += 1
        h[1] += seconds
        h[2] += 1

    def histogram(self, name: str) -> dict[str, float]:
        """Count, sum and the cumulative count at each bound ("+Inf" last) of one histogram."""
        counts, total, n = self._histograms.get(name, [[0] * (len(SECONDS_BUCKETS) + 1), 0.0, 0])
        out, running = {}, 0
        for bound, c in zip([*map(str, SECONDS_BUCKETS), "+Inf"], counts):
            running += c
            out[bound] = running
        return {"count": n, "sum": total, **out}

    def get(self, name: str, **labels: str) -> float:
        key = _key(name, labels)
        return self._counters.get(key, self._gauges.get(key, 0))

    def render(self) -> str:
        lines = []
        for kind, series in (("counter", self._counters), ("gauge", self._gauges)):
            seen = set()
            for (name, labels), value in sorted(series.items()):
                full = f"sendtrack_{name}"
                if full not in seen:
                    lines.append(f"# TYPE {full} {kind}")
                    seen.add(full)
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{full}{{{label_text}}} {_number(value)}" if label_text else f"{full} {_number(value)}")
        for name in sorted(self._histograms):
            full = f"sendtrack_{name}"
            lines.append(f"# TYPE {full} histogram")
            h = self.histogram(name)
            count, total = h.pop("count"), h.pop("sum")
            lines.extend(f'{full}_bucket{{le="{bound}"}} {n}' for bound, n in h.items())
            lines.append(f"{full}_sum {_number(total)}")
            lines.append(f"{full}_count {count}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """A sample's value, exact: whole numbers without a fraction (a counter of 15,981,674 records),
    others as Python's shortest exact form (not six significant digits, which made that counter
    1.59817e+07)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


metrics = Metrics()
