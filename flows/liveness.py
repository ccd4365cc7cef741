"""Is the process that started some work still alive? (Pids are reused: a pid plus its start time is not.)"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessIdentity:
    """A process on a host, told apart from a later one with the same pid by its start time."""

    host: str
    pid: int
    start_ticks: str  # /proc/<pid>/stat field 22: clock ticks after boot

    @classmethod
    def of_this_process(cls) -> "ProcessIdentity":
        return cls(socket.gethostname(), os.getpid(), start_ticks(os.getpid()))

    @classmethod
    def parse(cls, text: str) -> "ProcessIdentity | None":
        host, _, rest = text.rpartition("@")
        pid, _, ticks = rest.partition(":")
        return cls(host, int(pid), ticks) if host and pid.isdigit() and ticks else None

    def __str__(self) -> str:
        return f"{self.host}@{self.pid}:{self.start_ticks}"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Only meaningful :meth:`on_this_host`."""
        return start_ticks(self.pid) == self.start_ticks


def start_ticks(pid: int) -> str:
    """The start time of ``pid`` (empty when there is no such process or it is a zombie)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == "Z" else fields[19]


def pid_alive(pid: int) -> bool:
    """A zombie counts as dead: it runs nothing and only waits for its parent to reap it."""
    return start_ticks(pid) != ""


def remove_dead_owners(root: Path) -> list[Path]:
    """Remove the entries (folders or files) of ``root`` named ``<pid>`` or ``<pid>.<anything>`` whose
    owner process is gone.

    Each process that makes scratch folders names them after itself, so whatever a killed process left
    is found and removed by the next one, and the folder holds no more entries than there are live owners.
    """
    removed = []
    for entry in root.iterdir() if root.is_dir() else ():
        owner = entry.name.split(".", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
