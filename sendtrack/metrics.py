"""Process-wide counters and gauges, rendered as Prometheus text for /metrics."""

from __future__ import annotations

from collections import defaultdict


class Metrics:
    """Counters and gauges keyed by name and sorted label pairs."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
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
                lines.append(f"{full}{{{label_text}}} {value:g}" if label_text else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


metrics = Metrics()
