"""Process pools for long jobs (evaluation, data collection) whose workers die with their parent.

A pool's workers block on its call queue, and a spawned worker holds both ends of that pipe, so a parent killed by
a signal (SIGTERM, SIGKILL, a device tool's time limit) leaves them behind: each finishes its episode, then waits
forever, holding its memory. `worker_pool` starts every worker with a thread that ends it when the parent's process
sentinel fires. What the parent wrote stays on disk, and a re-run resumes from it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import wait


def _exit_with_parent() -> None:
    """Pool initializer: a daemon thread that waits on the parent's sentinel and ends this worker at once."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes (no fork: gRPC, MuJoCo's GL and torch threads do not survive one) that exit
    when this process dies."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent)
