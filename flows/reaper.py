"""A build leaves nothing behind, even when its driver is killed with SIGKILL.

A driver that dies hard runs no cleanup: Prefect's ephemeral API server (a uvicorn child), the local
Ray cluster (GCS, raylet, workers) and every Blender would outlive it. So a build starts one small
reaper process per driver, in its own session (a kill of the build's process group does not reach it).
While the driver lives, the reaper keeps the driver's process tree in view (once a second); when the
driver is gone, it stops, then kills, every process of that tree still running (each checked by its
start time, so a reused pid is never hit), and removes the driver's Ray session folder and its
Blenders' scratch folders. Then it exits. A driver that ends normally has stopped its children
already, and the reaper finds nothing to do.

Usage (internal): ``python -m flows.reaper DRIVER_PID``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import psutil

from flows.blender_process import SCRATCH_ROOT
from flows.liveness import remove_dead_owners
from flows.ray_cluster import LOCAL_TEMP_DIR

SCAN_PERIOD_S = 1.0
_started_for: int | None = None


def start_reaper() -> int | None:
    """Start this process's reaper once (later calls do nothing); returns its pid."""
    global _started_for
    if _started_for == os.getpid():
        return None
    _started_for = os.getpid()
    reaper = subprocess.Popen(
        [sys.executable, "-m", "flows.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    return reaper.pid


def watch(driver_pid: int) -> int:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    tree: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():  # the reaper is the driver's child too
                    tree.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        tree = {pid: p for pid, p in tree.items() if p.is_running()}
        time.sleep(SCAN_PERIOD_S)
    survivors = freeze(tree)
    for process in survivors:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=10)
    shutil.rmtree(LOCAL_TEMP_DIR / str(driver_pid), ignore_errors=True)
    remove_dead_owners(SCRATCH_ROOT)  # the killed Blenders' scratch folders
    return 0


def freeze(tree: dict[int, psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP every process of the tree still running, and their children until none is new.

    Killing them one by one while the rest run lets a survivor (a raylet) start replacements that
    nobody tracked; stopped processes start nothing, so the whole set is known before the kill.
    """
    stopped: dict[int, psutil.Process] = {}
    pending = [p for p in tree.values() if p.is_running()]  # is_running compares start times too
    while pending:
        process = pending.pop()
        if process.pid in stopped:
            continue
        if process.pid == os.getpid():
            continue
        try:
            process.suspend()
            stopped[process.pid] = process
            pending += process.children()
        except psutil.NoSuchProcess:
            continue
    return list(stopped.values())


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
