"""run_perf_analyzer's priority split: every thread of the child but its main one goes to WORKER_NICE.

perf_analyzer's main thread must keep its share of the core against its workers, or its bookkeeping
between windows falls behind for good (benchmarks/compare_perf_analyzer.py, run_perf_analyzer). The
split is checked on a stand-in child with a few threads, one started late, as perf_analyzer starts
its workers after it parsed the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from benchmarks.compare_perf_analyzer import WORKER_NICE, _lower_workers

CHILD = """
import sys, threading, time
threads = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(3)]
for t in threads[:2]:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
threads[2].start()
print("late", flush=True)
time.sleep(30)
"""


def _nice(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat: nice


def _nices(pid: int) -> dict[int, int]:
    return {int(tid): _nice(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_workers_are_lowered_and_the_main_thread_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_lower_workers, args=(child.pid, stop), daemon=True)
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        main_nice = _nice(child.pid, child.pid)
        watcher.start()
        assert _wait_for(lambda: len(_nices(child.pid)) == 3
                         and all(n == WORKER_NICE for t, n in _nices(child.pid).items() if t != child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "late"
        assert _wait_for(lambda: len(_nices(child.pid)) == 4
                         and all(n == WORKER_NICE for t, n in _nices(child.pid).items() if t != child.pid))
        assert _nice(child.pid, child.pid) == main_nice != WORKER_NICE
    finally:
        stop.set()
        child.kill()
        child.communicate()  # reaps it and closes its pipes
        watcher.join(timeout=5)
    assert not watcher.is_alive()


def test_the_watcher_ends_when_the_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stop = threading.Event()
    watcher = threading.Thread(target=_lower_workers, args=(child.pid, stop), daemon=True)
    watcher.start()
    watcher.join(timeout=5)
    assert not watcher.is_alive()
