"""How long an event loop waits for a core beside busy background threads, by their scheduling.

The worker's event loop wakes often and briefly (a fetch, an acknowledgement, a 100 ms tick), while
RocksDB's compactions and ClickHouse's merges run for seconds. This runs such a loop (sleep 0.5 ms,
work 0.3 ms, for `--seconds`) in one process beside `--burners` threads that keep a core busy outside
the GIL (hashlib over 1 MB), once per way of running them: at the loop's priority (`none`), ten and
nineteen steps nicer (`nice10`, what SENDTRACK_BACKGROUND_NICE sets; `nice19`), and under Linux's
SCHED_IDLE policy (`idle`: any ordinary thread that wakes preempts them). It prints, per variant, the
share of the time the loop ran and waited runnable for a core (its /proc schedstat), and how late
its sleeps woke (p50, p99, max), and keeps them in bench/results/sched-policy-*.json.

    .venv/bin/python bench/sched_policy.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("none", "nice10", "nice19", "idle")


def burn(variant: str, stop: threading.Event) -> None:
    tid = threading.get_native_id()
    if variant.startswith("nice"):
        os.setpriority(os.PRIO_PROCESS, tid, int(variant[4:]))
    elif variant == "idle":
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    data = b"x" * (1 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()  # hashlib releases the GIL for inputs this large


def schedstat(tid: int) -> tuple[int, int]:
    """Nanoseconds the thread ran, and waited runnable for a core."""
    ran, waited, _ = open(f"/proc/self/task/{tid}/schedstat").read().split()
    return int(ran), int(waited)


def run_variant(variant: str, burners: int, seconds: float) -> dict:
    stop = threading.Event()
    threads = [threading.Thread(target=burn, args=(variant, stop), daemon=True) for _ in range(burners)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    tid = threading.get_native_id()
    ran0, waited0 = schedstat(tid)
    started = time.monotonic()
    late: list[float] = []
    clock = time.perf_counter
    while time.monotonic() - started < seconds:
        t = clock()
        time.sleep(0.0005)
        late.append(clock() - t - 0.0005)
        t = clock()
        while clock() - t < 0.0003:
            pass
    ran1, waited1 = schedstat(tid)
    wall = time.monotonic() - started
    stop.set()
    late.sort()
    return {"variant": variant, "burners": burners, "seconds": round(wall, 1),
            "loop_ran": round((ran1 - ran0) / 1e9 / wall, 3), "loop_waited": round((waited1 - waited0) / 1e9 / wall, 3),
            "late_ms_p50": round(late[len(late) // 2] * 1e3, 3), "late_ms_p99": round(late[int(len(late) * 0.99)] * 1e3, 3),
            "late_ms_max": round(late[-1] * 1e3, 1), "wakeups": len(late)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burners", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=2, help="each variant this many times, in turn")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.burners, args.seconds)), flush=True)
        return
    results = []
    for _ in range(args.rounds):
        for variant in VARIANTS:  # each in a fresh process: a thread's policy and nice stay with it
            out = subprocess.run([sys.executable, __file__, "--burners", str(args.burners), "--seconds",
                                  str(args.seconds), "--child", variant], check=True, stdout=subprocess.PIPE,
                                 text=True).stdout
            results.append(json.loads(out.splitlines()[-1]))
            r = results[-1]
            print(f"{variant:7s} loop ran {r['loop_ran']:.0%}, waited {r['loop_waited']:.1%}; woke late "
                  f"p50 {r['late_ms_p50']} ms, p99 {r['late_ms_p99']} ms, max {r['late_ms_max']} ms", flush=True)
    path = ROOT / "bench" / "results" / f"sched-policy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"cpus": os.cpu_count(), "kernel": os.uname().release, "results": results},
                               indent=2) + "\n")
    print(f"sched policy: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
