"""emu35_robot.workers: a pool's workers end when their parent is killed, instead of waiting forever."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import multiprocessing, sys, time
from emu35_robot.workers import worker_pool
pool = worker_pool(2)
futures = [pool.submit(time.sleep, 120) for _ in range(2)]
time.sleep(0.5)
while len(multiprocessing.active_children()) < 2:
    time.sleep(0.1)
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
time.sleep(120)
"""

FORK_PARENT = """
import multiprocessing, time
from emu35_robot.training.sequences import _init_worker
pool = multiprocessing.get_context("fork").Pool(2, _init_worker, (None,))  # as encode_pairs starts its workers
pool.map_async(time.sleep, [120, 120], chunksize=1)
while len(multiprocessing.active_children()) < 2:
    time.sleep(0.1)
time.sleep(0.5)
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (now init) has yet to reap it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("script", [PARENT, FORK_PARENT], ids=["worker_pool", "sequence_encoding_pool"])
def test_workers_exit_when_their_parent_is_killed(script):
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) >= 2 and all(_alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)  # no clean-up runs: as when a time limit kills a run
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"
