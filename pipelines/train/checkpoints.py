"""Checkpoints of a training run: named by step, committed atomically, each with a JSON record beside it.

Layout of a run folder::

    <run_dir>/run.lock                      held (flock) by the one process training this run
    <run_dir>/checkpoints/step-00000050/    accelerate's save_state (model, optimiser, scheduler, RNG, progress)
    <run_dir>/checkpoints/step-00000050.json  CheckpointRecord: dataset pin, config, code version, step
    <run_dir>/metrics.jsonl                 one line per logged step (a resumed run logs its steps again)
    <run_dir>/logs/                         TensorBoard

A checkpoint is written into ``.step-XXXXXXXX.partial`` and renamed to ``step-XXXXXXXX`` after its
JSON is in place, so a run killed in the middle of a save leaves no folder that looks complete.
Names carry the step itself: accelerate's automatic naming restarts its counter after ``load_state``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from pipelines.files import write_atomic
from pipelines.train.config import TrainConfig
from schemas.assets import utcnow
from schemas.errors import ReasonError

CHECKPOINTS = "checkpoints"
RECORD_SUFFIX = ".json"
_NAME = re.compile(r"step-(\d{8})")
M = TypeVar("M", bound=BaseModel)


class RunError(ReasonError, ValueError):
    """A run folder or checkpoint that cannot be used; ``reason`` is a stable code."""


def validate_config(model: type[M], config: dict[str, Any] | M | None, what: str) -> M:
    """``config`` as ``model``; a bad one raises ``RunError("bad_parameters")`` with one line per wrong field."""
    if isinstance(config, model):
        return config
    try:
        return model.model_validate(config or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RunError("bad_parameters", f"invalid {what}: {problems}") from None


class DatasetPin(BaseModel):
    """The exact data a run reads: one Lance version of ``samples`` and one render configuration."""

    lance_uri: str
    version: int
    config_hash: str
    n_train: int = 0
    n_val: int = 0
    latents_version: int | None = Field(None, description="version of the `latents` table read, when precomputed")
    vae_id: str = Field("pixel", description="codec identity (models: pipelines.train.latents.codec_id)")


class CheckpointRecord(BaseModel):
    """The JSON beside a checkpoint."""

    step: int
    micro_batches: int = Field(description="batches this process consumed: the data position")
    phase: str = Field(description="'rgb' (RGB branch alone) or 'both'")
    dataset: DatasetPin
    config: TrainConfig
    code_version: str
    losses: dict[str, float] = Field(default_factory=dict, description="mean losses of the last logged step")
    created_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + RECORD_SUFFIX)

    def record(self) -> CheckpointRecord:
        return CheckpointRecord.model_validate_json(self.record_path.read_text())

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints (folder and record) of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir() and path.with_name(path.name + RECORD_SUFFIX).is_file():
            found.append(Checkpoint(path, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    match = _NAME.fullmatch(path.name)
    if match:
        checkpoint = Checkpoint(path, int(match.group(1)))
        if not (path.is_dir() and checkpoint.record_path.is_file()):
            raise RunError("checkpoint_not_found", f"{path} is not a complete checkpoint (folder and {checkpoint.record_path.name})")
        return checkpoint
    latest = latest_checkpoint(path)
    if latest is None:
        raise RunError("checkpoint_not_found", f"{path} is neither a checkpoint folder nor a run folder with checkpoints")
    return latest


def staging_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is saved before :func:`commit_checkpoint` names it."""
    return Path(run_dir) / CHECKPOINTS / f".{checkpoint_name(step)}.partial"


def clear_staging(path: Path) -> None:
    """An empty staging folder (a leftover of a killed save is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def commit_checkpoint(staged: Path, record: CheckpointRecord) -> Checkpoint:
    """Write the record beside the final name, then move the staged folder there (atomic on one filesystem)."""
    checkpoint = Checkpoint(staged.parent / checkpoint_name(record.step), record.step)
    write_atomic(checkpoint.record_path, record.model_dump_json(indent=2))
    os.rename(staged, checkpoint.path)
    return checkpoint


def prune_checkpoints(run_dir: Path, keep: int | None) -> list[Checkpoint]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted ones."""
    checkpoints = list_checkpoints(run_dir)
    doomed = checkpoints[:-keep] if keep else []
    for checkpoint in doomed:
        checkpoint.record_path.unlink(missing_ok=True)  # first: without it the folder no longer counts
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return doomed


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/run.lock``: one trainer per run folder. The kernel drops it
    when the holder dies, even by SIGKILL, so a restarted run can always take it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"
        self._fd = -1

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise RunError("run_locked", f"another process is training in {self.path.parent}") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

