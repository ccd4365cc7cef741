"""What a build's processes expose and leave behind: loopback-only sockets, and nothing alive after its
driver is killed.

The build here runs as a user runs it (``kp20k build`` in its own process, Prefect's ephemeral API in a
private home, its own local Ray), so every process it starts is its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.blender_process import SCRATCH_ROOT
from flows.liveness import remove_dead_owners
from flows.ray_cluster import LOCAL_TEMP_DIR
from pipelines.build.sources.procedural import generate_assets
from tests.flows.conftest import REPO_ROOT, is_loopback, kill_session, listening_sockets, session_members

pytestmark = pytest.mark.slow


def descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a killed process whose parent died too waits for init to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_rendering(run: subprocess.Popen, log: Path, timeout_s: float = 300) -> dict[int, psutil.Process]:
    """The build's process tree once a Blender of it is working (its Ray and Prefect are all up then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the build ended before it rendered:\n{log.read_text()[-3000:]}"
        tree = descendants(run.pid)
        for process in tree.values():
            try:
                if "flows.blender_process" in " ".join(process.cmdline()):
                    return descendants(run.pid)
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no Blender worker after {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_a_local_build_listens_on_loopback_only_and_a_killed_driver_leaves_nothing_alive(tmp_path):
    folder = tmp_path / "assets"
    generate_assets(6, folder, seed=90)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # the ephemeral API, as with no server at all
    log = tmp_path / "build.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "build", "--source", "local", "--folder", str(folder),
             "--lance", str(tmp_path / "t.lance"), "--cache-dir", str(tmp_path / "cache"), "--workers", "2",
             "--views", "2", "--frames", "2", "--resolution", "32", "--samples", "2"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        tree = wait_for_rendering(run, log)
        names = {p.name() for p in tree.values() if p.is_running()}  # (a process ending here would be a bug too)
        assert {"gcs_server", "raylet"} <= names, names  # the build's own Ray is among what is checked
        sockets = listening_sockets({run.pid, *tree})
        assert sockets, "a running build listens somewhere (Ray, the ephemeral Prefect API)"
        exposed = [s for s in sockets if not is_loopback(s[0])]
        assert exposed == [], f"listening beyond loopback: {exposed}"
        assert (LOCAL_TEMP_DIR / str(run.pid)).is_dir()  # the build's Ray session folder, until it ends

        os.kill(run.pid, signal.SIGKILL)  # the driver alone, not its process group
        run.wait(30)
        left = list(tree.values())
        # Ten seconds: what the issue asks of actors' watchdogs and the reaper (each polls at <= 1 s).
        deadline = time.monotonic() + 10
        while (alive := [p for p in left if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == [], [f"{p.pid} {p.name()}" for p in alive]
        deadline = time.monotonic() + 10
        while (LOCAL_TEMP_DIR / str(run.pid)).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (LOCAL_TEMP_DIR / str(run.pid)).exists()
        # nor any Blender scratch folder of the killed actors (named after their pids)
        owners = {str(pid) for pid in tree}
        assert not [f for f in SCRATCH_ROOT.iterdir() if f.name.split(".")[0] in owners]
    finally:
        kill_session(run)


def test_the_prefect_server_and_worker_listen_on_loopback_only(prefect_stack):
    members = set(session_members(int(prefect_stack["PREFECT_STACK_PID"])))
    names = {psutil.Process(pid).name() for pid in members if psutil.pid_exists(pid)}
    sockets = listening_sockets(members)
    assert any(port == int(prefect_stack["PREFECT_API_URL"].split(":")[2].split("/")[0]) for _, port, _, _ in sockets), (sockets, names)
    assert [s for s in sockets if not is_loopback(s[0])] == []


def test_scratch_folders_of_dead_owners_are_removed_and_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / str(dead_pid) / "session_x").mkdir(parents=True)  # a Ray session folder
    (tmp_path / f"{dead_pid}.3").mkdir()  # a Blender's scratch folder
    (tmp_path / str(os.getppid())).mkdir()  # alive: this test's parent
    (tmp_path / "not-a-pid").mkdir()
    (tmp_path / f"{dead_pid}.0af3.parquet").write_bytes(b"PAR1")  # a killed build's candidates file
    removed = remove_dead_owners(tmp_path)
    assert sorted(removed) == sorted([tmp_path / str(dead_pid), tmp_path / f"{dead_pid}.3", tmp_path / f"{dead_pid}.0af3.parquet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getppid()), "not-a-pid"])
