"""run_perf_analyzer's priority split: every thread of perf_analyzer but its main one goes to WORKER_NICE.

perf_analyzer's main thread must keep its share of the core against its workers, or its bookkeeping
between windows falls behind for good (benchmarks/compare_perf_analyzer.py, run_perf_analyzer). The
split is checked on stand-ins with a few threads, one started late, as perf_analyzer starts its
workers after it parsed the model: `_lower_workers` on a child of the test, and `run_perf_analyzer`
itself with a stand-in script where the wrapper would be (taskset and an `exec` in between, as for
the real one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import compare_perf_analyzer
from benchmarks.compare_perf_analyzer import WORKER_NICE, _lower_workers, run_perf_analyzer

pytestmark = pytest.mark.skipif(os.getpriority(os.PRIO_PROCESS, 0) >= WORKER_NICE,
                                reason="the tests run at WORKER_NICE or lower priority already")

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

# Stands in for perf_analyzer: starts workers, one of them late, then writes each thread's nice as
# "main" or "worker" rows of the CSV named by -f, as perf_analyzer writes its figures there.
STAND_IN = """
import os, sys, threading, time
csv = sys.argv[sys.argv.index("-f") + 1]
threads = [threading.Thread(target=time.sleep, args=(3,), daemon=True) for _ in range(3)]
for t in threads[:2]:
    t.start()
time.sleep(0.5)
threads[2].start()
time.sleep(0.5)
rows = ["thread,nice"]
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/stat") as stat:
        nice = stat.read().rsplit(")", 1)[1].split()[16]
    rows.append(f"{'main' if int(tid) == os.getpid() else 'worker'},{nice}")
open(csv, "w").write("\\n".join(rows) + "\\n")
"""


def _nice(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat: nice


def _workers_lowered(pid: int, at_least: int) -> bool:
    nices = {int(tid): _nice(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
    workers = [n for tid, n in nices.items() if tid != pid]
    return len(workers) >= at_least and all(n == WORKER_NICE for n in workers)


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
    watcher.start()
    try:
        assert child.stdin is not None and child.stdout is not None
        main_nice = _nice(child.pid, child.pid)
        assert child.stdout.readline().strip() == "ready"
        assert _wait_for(lambda: _workers_lowered(child.pid, at_least=2))
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "late"
        assert _wait_for(lambda: _workers_lowered(child.pid, at_least=3))
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
    stopped = not watcher.is_alive()
    stop.set()
    assert stopped


def _stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    (tmp_path / "stand_in.py").write_text(code)
    script = tmp_path / "perf_analyzer.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "stand_in.py"} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setattr(compare_perf_analyzer, "PERF_ANALYZER", script)


def test_run_perf_analyzer_lowers_the_workers_through_taskset_and_exec(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in(tmp_path, monkeypatch, STAND_IN)
    rows = run_perf_analyzer(["-m", "mlp"], tmp_path / "pa.csv", str(sorted(os.sched_getaffinity(0))[0]))
    assert {r["thread"] for r in rows} == {"main", "worker"}
    assert [int(r["nice"]) for r in rows if r["thread"] == "worker"] == [WORKER_NICE] * 3
    assert [int(r["nice"]) for r in rows if r["thread"] == "main"] == [os.getpriority(os.PRIO_PROCESS, 0)]
    assert (tmp_path / "pa.log").read_text().startswith("$ taskset")


def test_run_perf_analyzer_kills_it_at_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in(tmp_path, monkeypatch, "import os, time; print(os.getpid(), flush=True); time.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired):
        run_perf_analyzer([], tmp_path / "pa.csv", str(sorted(os.sched_getaffinity(0))[0]), timeout_s=1.0)
    log = (tmp_path / "pa.log").read_text()
    assert "(killed at the timeout)" in log
    pid = int(log.splitlines()[2])
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped
