"""Where a running worker's CPU goes, by thread name, every `--interval` seconds.

Threads are named by what started them: `python` (the engine's event loop and Python's own
threads), `rocksdb:low` / `rocksdb:high` (RocksDB's compactions / flushes), `MergeMutate` (embedded
ClickHouse's merges), `ThreadPool`, `QueryPipelineEx` and others (its inserts and queries). Each line
gives the cores each name used over the interval (a thread's CPU is counted by thread id, so a
thread that changes its name is counted once), and the broker's process beside it. Run it beside a
`make bench` (it waits for the worker to start and ends with it):

    python3 bench/thread_cpu.py > bench/results/threads-<run>.log
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


def pid_of(pattern: str) -> int | None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def threads(pid: int) -> dict[str, tuple[str, float]]:
    """thread id -> (name without trailing digits, CPU seconds so far)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[tid] = (re.sub(r"\d+$", "", name), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="sendtrack.cli worker", help="pgrep -f pattern of the worker")
    parser.add_argument("--broker", default="kafka.Kafka", help="pgrep -f pattern of the broker")
    parser.add_argument("--interval", type=float, default=60.0)
    args = parser.parse_args()
    while (pid := pid_of(args.worker)) is None:
        time.sleep(2)
    broker = pid_of(args.broker)
    print(f"worker {pid} broker {broker}", flush=True)
    cpu_of_broker = lambda: sum(v for _, v in threads(broker).values()) if broker else 0.0  # noqa: E731
    before, broker_before = threads(pid), cpu_of_broker()
    started = last = time.time()
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(args.interval)
        try:
            now_threads, broker_now = threads(pid), cpu_of_broker()
        except OSError:  # the worker ended
            break
        now = time.time()
        used: collections.Counter = collections.Counter()
        for tid, (name, cpu) in now_threads.items():
            used[name] += cpu - before.get(tid, (name, 0.0))[1]
        span = now - last
        print(f"t={now - started:6.0f}s worker={sum(used.values()) / span:.2f} cores "
              f"broker={(broker_now - broker_before) / span:.2f} | "
              + ", ".join(f"{name}={cpu / span:.2f}" for name, cpu in used.most_common(10) if cpu / span >= 0.005),
              flush=True)
        before, broker_before, last = now_threads, broker_now, now


if __name__ == "__main__":
    main()
