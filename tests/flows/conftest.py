"""Real infrastructure for the flow tests: one local Ray per session, the local Prefect stack of
infra/local-stack.sh (server + `process` pool + deployments + worker) on a free loopback port, and
tiny render settings.

Every process a fixture starts is in its own session and is killed by process group at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# 2 views x 2 frames at 32 px, 2 samples: every test render is as small as the grid allows.
TINY_RENDER = {"n_views": 2, "n_frames": 2, "resolution": 32, "samples": 2, "denoise": False}
STACK_READY = "local-stack: ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_session(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its session."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_members(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.wait(10)


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (children that left the process group included)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    """True once ``pid`` has exited (within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.2)
    return False


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}) before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"no {text!r} after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for every in-process test (each ``ray.init`` costs ~5 s and ~760 MiB here), started
    as a build starts its own: loopback only, in its own session folder."""
    from flows.ray_cluster import connect

    connection = connect(num_cpus=2)
    yield
    connection.close()


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """infra/local-stack.sh on a free port with its own PREFECT_HOME; yields the environment that
    points a client (a subprocess, the prefect CLI) at it."""
    home = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(home), "PREFECT": str(VENV_BIN / "prefect")}
    log = home / "stack.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen(
            ["bash", str(REPO_ROOT / "infra" / "local-stack.sh")], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_line(log, STACK_READY, stack, timeout_s=240)
        yield {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_STACK_LOG": str(log), "PREFECT_STACK_PID": str(stack.pid)}
    finally:
        kill_session(stack)


@pytest.fixture(scope="module")
def prefect_api(prefect_stack: dict[str, str]) -> Iterator[str]:
    """Flows called in this module's process report to the stack's server (this module only)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_stack["PREFECT_API_URL"]}):
        yield prefect_stack["PREFECT_API_URL"]
        APILogWorker.drain_all(timeout=10)  # send this module's run logs while the server is up


def cli_build(arguments: list[str], stack: dict[str, str], log: Path) -> subprocess.Popen:
    """``kp20k build ... --json`` in a new session (so it can be killed whole), reporting to the stack."""
    env = {**os.environ, "PREFECT_API_URL": stack["PREFECT_API_URL"]}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "build", "--json", "--params", json.dumps({"render": TINY_RENDER}), *arguments],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every TCP/UDP socket listening in ``pids``."""
    import psutil

    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in pids and (conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and conn.laddr)):
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                name = "?"
            found.append((conn.laddr.ip, conn.laddr.port, conn.pid, name))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (a dual-stack socket bound to 127.0.0.1)."""
    import ipaddress

    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def report_from_log(log: Path):
    """The BuildReport a ``--json`` run printed (its last JSON line)."""
    from flows.report import BuildReport

    lines = [line for line in log.read_text().splitlines() if line.startswith('{"lance_uri"')]
    assert lines, log.read_text()[-3000:]
    return BuildReport.model_validate_json(lines[-1])
