"""A render actor's supervised worker recycles its Blender through a spare started ahead.

The worker here is a stand-in that answers an asset only once its gate file exists, so each test
decides when an asset ends and can look at the supervisor's children while one is still working.
No Ray: :class:`SupervisedWorker` is what runs inside a render actor.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import psutil

from flows.blender_process import SupervisedWorker, WorkerDeath
from schemas.assets import AssetRef, RejectReason
from tests.flows.conftest import wait_gone


class GatedWorker:
    """Answers an asset with its own pid once ``<gates>/<sha256>`` exists; cannot start while
    ``<gates>/broken`` exists."""

    def __init__(self, gates: str):
        self.gates = Path(gates)
        if (self.gates / "broken").exists():
            raise RuntimeError("no Blender on this node")

    def process(self, asset: AssetRef, clips: list[str] | None = None) -> int:
        while not (self.gates / asset.sha256).exists():
            time.sleep(0.02)
        return os.getpid()


def asset(n: int) -> AssetRef:
    return AssetRef(file_identifier=f"a{n}", source="local", file_type="glb", sha256=f"{n:064x}")


def open_gate(gates: Path, n: int) -> None:
    (gates / asset(n).sha256).touch()


def children() -> set[int]:
    """This process's live Blender workers (the supervisor here is the test process)."""
    found = set()
    for process in psutil.Process().children():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "flows.blender_process" in process.cmdline():
                found.add(process.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def in_background(worker: SupervisedWorker, n: int) -> tuple[threading.Thread, list]:
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(worker.process(asset(n), None, 60)))
    thread.start()
    return thread, answer


def test_the_blender_for_the_next_assets_starts_while_the_last_one_of_the_old_works(tmp_path):
    """recycle_after=2: while the first Blender works on its second (last) asset, a spare is already
    running beside it; the spare takes the third asset, and the first Blender is gone."""
    worker = SupervisedWorker(partial(GatedWorker, str(tmp_path)), recycle_after=2)
    try:
        first = worker.pid
        open_gate(tmp_path, 1)
        assert worker.process(asset(1), None, 60) == first
        assert children() == {first}  # real work takes time: no spare before the last asset
        thread, answer = in_background(worker, 2)
        assert wait_for(lambda: len(children()) == 2), children()  # the spare, started while asset 2 is open
        (spare,) = children() - {first}
        open_gate(tmp_path, 2)
        thread.join(60)
        assert answer == [first]  # the old Blender answered its last asset
        assert worker.pid == spare and worker.recycled == 1
        assert wait_gone(first)
        open_gate(tmp_path, 3)
        assert worker.process(asset(3), None, 60) == spare
    finally:
        worker.close()
    assert wait_gone(spare)


def test_work_that_takes_no_time_starts_the_spare_at_once(tmp_path):
    """When what is left of a Blender's life takes less than a start, the spare starts at once: here,
    after one asset answered in milliseconds, with three to go (not only at the last asset). Three,
    not more: the rule compares times, and a busy machine slows an answer as much as a start."""
    for n in range(1, 4):
        open_gate(tmp_path, n)
    worker = SupervisedWorker(partial(GatedWorker, str(tmp_path)), recycle_after=4)
    try:
        first = worker.pid
        worker.process(asset(1), None, 60)
        worker.process(asset(2), None, 60)
        assert len(children() - {first}) == 1 and worker.pid == first
    finally:
        worker.close()


def test_a_blender_that_dies_while_the_spare_loads_is_replaced_by_the_spare(tmp_path):
    worker = SupervisedWorker(partial(GatedWorker, str(tmp_path)), recycle_after=2)
    try:
        first = worker.pid
        open_gate(tmp_path, 1)
        worker.process(asset(1), None, 60)
        thread, answer = in_background(worker, 2)
        assert wait_for(lambda: len(children()) == 2)
        (spare,) = children() - {first}
        os.kill(first, signal.SIGKILL)
        thread.join(60)
        (death,) = answer
        assert isinstance(death, WorkerDeath) and death.reason is RejectReason.crashed
        assert f"Blender worker pid {first} killed by SIGKILL" in death.detail
        assert worker.pid == spare and children() == {spare}
    finally:
        worker.close()


def test_a_spare_that_cannot_start_leaves_no_blender_and_loses_no_result(tmp_path):
    """The last asset's result comes back; with no Blender left, ``pid`` is None (the pool then
    retires the actor, whose replacement reports why it cannot start)."""
    worker = SupervisedWorker(partial(GatedWorker, str(tmp_path)), recycle_after=1)
    try:
        first = worker.pid
        (tmp_path / "broken").touch()
        open_gate(tmp_path, 1)
        assert worker.process(asset(1), None, 60) == first
        assert worker.pid is None and worker.recycled == 1
        assert wait_for(lambda: not children())
    finally:
        worker.close()
