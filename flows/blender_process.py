"""One warm worker (one Blender) in a child process of its render actor, so that a death is explained.

Blender can die in ways no Python handler sees: a segfault, the kernel's OOM killer, a SIGKILL. Ray
reports only "the worker process has died" for its own workers, so the render actor does not run
Blender itself: it is a small supervisor, and Blender runs in its child. The supervisor waits for the
child with ``wait4`` and so knows the exit signal or code, the child's peak memory (``ru_maxrss``),
whether the cgroup's OOM-kill count rose meanwhile (the kernel's OOM killer), and where the child's
Blender log ends. The actor survives and starts a fresh Blender for the next asset.

Deadlines are kept here too: a child that gives no result within the asset's deadline (a hang, a
deadlock, a SIGSTOP) is killed, reported as a timeout, and replaced.

Recycling is here as well: given ``recycle_after``, a child is ended after that many assets (long-lived
Blenders leak and have been seen to hang) and a spare takes its place. The spare is started while the
old child still works, as late as it can be and still be ready in time (at the last asset when assets
take minutes), so a recycle costs no wait; a child that dies while a spare loads is replaced by it.

The child dies with its supervisor (``PR_SET_PDEATHSIG``; children are started from one thread of the
supervisor that lives as long as it, since that signal follows the starting *thread*), so killing an
actor never leaves a Blender behind, and its temporary files (renders in flight, EXR passes) go to a
scratch folder of its own, ``<tmp>/kp20k-blender/<supervisor pid>.<n>``, removed when the child ends;
folders of supervisors that were killed are removed by the next supervisor that starts. Messages
travel over a socket pair (``multiprocessing.connection``): the first carries the supervisor's
``sys.path`` and the pickled worker factory, then one message per asset each way.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from flows.liveness import remove_dead_owners
from schemas.assets import AssetRef, RejectReason

PR_SET_PDEATHSIG = 1
LOG_TAIL_LINES = 6
LOG_TAIL_CHARS = 700
STARTUP_TIMEOUT_S = 300.0
SCRATCH_ROOT = Path(tempfile.gettempdir()) / "kp20k-blender"


class WorkerStartError(RuntimeError):
    """The child could not build its worker (no Blender, a bad factory) or died while starting."""


@dataclass(frozen=True)
class WorkerDeath:
    """What an asset cost instead of a result: the child died on it, or missed its deadline."""

    reason: RejectReason  # crashed or timeout
    detail: str
    pid: int


@dataclass(frozen=True)
class ExitStatus:
    pid: int
    status: int
    peak_rss_kib: int

    @property
    def signal(self) -> signal.Signals | None:
        return signal.Signals(os.WTERMSIG(self.status)) if os.WIFSIGNALED(self.status) else None

    @property
    def code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None


class _Child:
    """One Blender process: its channel, its scratch folder, and whether its worker is built yet."""

    def __init__(self, factory: bytes):
        ours, theirs = socket.socketpair()
        self.oom_kills_at_start = oom_kill_count()
        self.scratch: Path | None = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.", dir=SCRATCH_ROOT))
        self.spawned_at = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "flows.blender_process", str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(self.scratch)},
        )
        theirs.close()
        self.conn: Connection | None = Connection(ours.detach())
        self.conn.send((list(sys.path), factory))
        self.log_path: str | None = None
        self.ready = False
        self.processed = 0  # assets this process answered
        self.busy_s = 0.0  # the time it spent on them

    @property
    def pid(self) -> int:
        return self.popen.pid


class SupervisedWorker:
    """``make_worker()`` built and run in a child process; :meth:`process` never raises for the child's death.

    With ``recycle_after``, a child is replaced after that many assets, by a spare started early enough
    to be ready when it is needed (see :meth:`_spare_due`): a recycle costs no waiting for a Blender.
    """

    def __init__(self, make_worker: Callable[[], Any], startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 recycle_after: int | None = None):
        from ray import cloudpickle  # pickles the factory by value where its module is not importable

        self._factory = cloudpickle.dumps(make_worker)
        self._startup_timeout_s = startup_timeout_s
        self._recycle_after = recycle_after
        self._child: _Child | None = None
        self._spare: _Child | None = None
        self._start_s = 0.0  # how long the last child took to become ready
        # Children are started from this one thread, whichever thread asks: PR_SET_PDEATHSIG fires when
        # the *thread* that started a child ends, and a caller's thread may end before its child should.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="blender-spawner")
        self.recycled = 0
        SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
        remove_dead_owners(SCRATCH_ROOT)
        self.start()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def log_path(self) -> str | None:
        return self._child.log_path if self._child is not None else None

    def start(self) -> None:
        """Make the spare (if one is loading) or a new child the current one, and wait until it is ready."""
        child, self._spare = self._spare or self._spawn(), None
        self._child = child
        try:
            self._await_ready(child)
        except WorkerStartError:
            self._child = None
            raise

    def process(self, asset: AssetRef, clips: list[str] | None, timeout_s: float) -> Any:
        """The worker's result for ``asset``, or a :class:`WorkerDeath` (then a fresh child is started)."""
        assert self._child is not None and self._child.conn is not None
        child = self._child
        if self._spare_due(child):
            self._spare = self._spawn()  # it loads while this child works
        started = time.monotonic()
        try:
            child.conn.send((asset, clips))
        except OSError:
            return self._died(RejectReason.crashed, "")
        if not child.conn.poll(timeout_s):
            self._kill(child)
            return self._died(RejectReason.timeout, f"no result after {timeout_s:g} s; Blender worker pid {child.pid} killed; ")
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            return self._died(RejectReason.crashed, "")
        child.processed += 1
        child.busy_s += time.monotonic() - started
        if self._recycle_after is not None and child.processed >= self._recycle_after:
            self._recycle()
        if kind == "error":  # an exception escaped the worker; the child is still up
            return WorkerDeath(RejectReason.crashed, f"the worker raised {payload}", child.pid)
        return payload

    def close(self) -> None:
        for child in (self._child, self._spare):
            if child is not None:
                self._end(child)
        self._child = self._spare = None
        self._spawner.shutdown(wait=False)

    def _spawn(self) -> _Child:
        return self._spawner.submit(_Child, self._factory).result()

    # -- recycling -----------------------------------------------------------------------------

    def _spare_due(self, child: _Child) -> bool:
        """Start the spare when what is left of this child's life, at its pace so far, is within twice
        a Blender's start (a start runs slower beside a render): at the last asset for real renders
        (minutes each), at once for work that takes no time."""
        if self._recycle_after is None or self._spare is not None:
            return False
        left = self._recycle_after - child.processed
        return left <= 1 or (child.processed > 0 and left * child.busy_s / child.processed <= 2 * self._start_s)

    def _recycle(self) -> None:
        """End the current child and make the spare current (a fresh one if its start failed): never
        raises; with no Blender left, ``pid`` is None and the actor is retired by the pool."""
        self._end(self._child)
        self.recycled += 1
        try:
            self.start()
        except WorkerStartError:
            try:
                self.start()
            except WorkerStartError:
                pass

    def _await_ready(self, child: _Child) -> None:
        if child.ready:
            return
        left = max(0.0, child.spawned_at + self._startup_timeout_s - time.monotonic())
        if not child.conn.poll(left):
            self._end(child)
            raise WorkerStartError(f"Blender worker pid {child.pid} not ready after {self._startup_timeout_s:.0f} s")
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            raise WorkerStartError(f"Blender worker died while starting: {self._reap_and_explain(child)}") from None
        if kind != "ready":
            self._end(child)
            raise WorkerStartError(payload)
        child.ready, child.log_path = True, payload
        self._start_s = time.monotonic() - child.spawned_at

    # -- deaths --------------------------------------------------------------------------------

    def _died(self, reason: RejectReason, prefix: str) -> WorkerDeath:
        child = self._child
        death = WorkerDeath(reason, prefix + self._reap_and_explain(child), child.pid)
        try:
            self.start()
        except WorkerStartError:
            pass  # no Blender: the pool retires this actor
        return death

    @staticmethod
    def _kill(child: _Child) -> None:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _end(self, child: _Child) -> None:
        """Kill and reap ``child`` if it still runs, and remove its scratch folder."""
        if child.popen.returncode is None:
            self._kill(child)
            self._reap(child)
        self._drop_scratch(child)

    @staticmethod
    def _reap(child: _Child) -> ExitStatus:
        pid, status, usage = os.wait4(child.pid, 0)
        child.popen.returncode = -1  # reaped here; Popen must not wait for it again
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        return ExitStatus(pid, status, usage.ru_maxrss)

    def _reap_and_explain(self, child: _Child) -> str:
        exit_status = self._reap(child)
        why = explain_death(exit_status, child.oom_kills_at_start, oom_kill_count(), child.log_path)
        self._drop_scratch(child)  # after the log (which may live there) was read
        return why

    @staticmethod
    def _drop_scratch(child: _Child) -> None:
        if child.scratch is not None:
            shutil.rmtree(child.scratch, ignore_errors=True)
            child.scratch = None


def explain_death(exit_status: ExitStatus, oom_before: int | None, oom_after: int | None, log_path: str | None) -> str:
    """One line: how the process ended, whether the kernel's OOM killer did it, its peak memory, its log's end."""
    sig = exit_status.signal
    if sig is not None:
        how = f"killed by {sig.name}"
        if sig is signal.SIGKILL:
            if oom_before is None or oom_after is None:
                how += " (the kernel's OOM-kill count cannot be read here)"
            elif oom_after > oom_before:
                how += f" by the kernel's OOM killer (cgroup oom_kill {oom_before} -> {oom_after})"
            else:
                how += " (not the kernel's OOM killer: the cgroup's oom_kill count did not change)"
    else:
        how = f"exited with code {exit_status.code}"
    text = f"Blender worker pid {exit_status.pid} {how}; peak memory {exit_status.peak_rss_kib / 1024:.0f} MiB"
    if not log_path:
        return text
    tail = log_tail(log_path)
    return f"{text}; its log {log_path} ends: {tail}" if tail else f"{text}; its log {log_path} is empty"


def log_tail(log_path: str | None, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_CHARS) -> str:
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def oom_kill_count() -> int | None:
    """The ``oom_kill`` count of this process's cgroup (v2), or None where it cannot be read."""
    try:
        entry = Path("/proc/self/cgroup").read_text().splitlines()[0]
        events = Path("/sys/fs/cgroup") / entry.split("::", 1)[1].lstrip("/") / "memory.events"
        for line in events.read_text().splitlines():
            key, value = line.split()
            if key == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        return None
    return None


# ----------------------------------------------------------------------------------- the child


def _die_with(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit at once if that already happened."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pool's ray.kill and the actor's watchdog still end the actor
    if os.getppid() != parent_pid:
        os._exit(1)


def child_main(fd: int, parent_pid: int) -> int:
    _die_with(parent_pid)
    conn = Connection(fd)
    paths, factory = conn.recv()
    # Appended, not prepended: the supervisor's path holds bpy's own scripts/modules folder once bpy is
    # imported, and ahead of site-packages it would shadow the real bpy package.
    sys.path += [p for p in paths if p not in sys.path]
    try:
        worker = pickle.loads(factory)()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which refuses to start
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    session = getattr(worker, "session", None)
    conn.send(("ready", str(getattr(session, "log_path", "") or "") or None))
    while True:
        try:
            asset, clips = conn.recv()
        except EOFError:
            return 0
        started = time.monotonic()
        try:
            conn.send(("result", worker.process(asset, clips=clips)))
        except Exception as exc:  # noqa: BLE001 - the worker is meant never to raise; say so if it did
            conn.send(("error", f"{type(exc).__name__}: {exc} (after {time.monotonic() - started:.1f} s)"))


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1]), int(sys.argv[2])))
