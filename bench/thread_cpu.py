"""Where a running worker's CPU goes, by thread name, every `--interval` seconds.

Threads are named by what started them: `python` (the engine's event loop and Python's own
threads), `rocksdb:low` / `rocksdb:high` (RocksDB's compactions / flushes), `MergeMutate` (embedded
ClickHouse's merges), `ThreadPool`, `QueryPipelineEx` and others (its inserts and queries). Each line
gives the cores each name used over the interval (a thread's CPU is counted by thread id, so a
thread that changes its name is counted once), and the broker's process beside it, with its four
busiest thread names (`data-plane-kafk`: its request handlers; `kafka-log-clean`: the log cleaner,
which compacts the changelogs). `machine` is every process's CPU (the bench's own publisher
included); `loop_waiting` the share of the interval the worker's main thread (the event loop) was
runnable but waiting for a core. Run it beside a `make bench` (it waits for the worker to start and ends with it):

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


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def waited(pid: int) -> float:
    """Seconds the worker's main thread (its event loop) has waited for a core while runnable
    (/proc/<pid>/schedstat's second field, in nanoseconds)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def by_name(now: dict[str, tuple[str, float]], before: dict[str, tuple[str, float]]) -> collections.Counter:
    """CPU seconds each thread name used between two `threads` readings."""
    used: collections.Counter = collections.Counter()
    for tid, (name, cpu) in now.items():
        used[name] += cpu - before.get(tid, (name, 0.0))[1]
    return used


def shares(used: collections.Counter, span: float, most: int) -> str:
    return ", ".join(f"{name}={cpu / span:.2f}" for name, cpu in used.most_common(most) if cpu / span >= 0.005)


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

    def broker_threads() -> dict[str, tuple[str, float]]:
        try:
            return threads(broker) if broker else {}
        except OSError:  # the broker stopped: the worker's figures go on
            return {}

    before, broker_before, busy_before, wait_before = threads(pid), broker_threads(), machine_busy(), waited(pid)
    started = last = time.time()
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(args.interval)
        try:
            now_threads, broker_now, busy_now = threads(pid), broker_threads(), machine_busy()
            wait_now = waited(pid)
        except OSError:  # the worker ended
            break
        now = time.time()
        span = now - last
        used, by_broker = by_name(now_threads, before), by_name(broker_now, broker_before)
        print(f"t={now - started:6.0f}s machine={(busy_now - busy_before) / span:.2f} "
              f"worker={sum(used.values()) / span:.2f} cores loop_waiting={(wait_now - wait_before) / span:.2f} "
              f"broker={sum(by_broker.values()) / span:.2f} | " + shares(used, span, 10)
              + " | broker: " + shares(by_broker, span, 4), flush=True)
        before, broker_before, busy_before, wait_before, last = now_threads, broker_now, busy_now, wait_now, now


if __name__ == "__main__":
    main()
