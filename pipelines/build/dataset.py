"""The PyTorch dataset over the ``samples`` table, pinned to one Lance version.

An item is a ``views x frames`` crop of one sample's grid, decoded from its frame packs: only the
chosen frames are read from the blob columns. View 0 of every item is the stored view 0 (azimuth 0),
so ``item["rgb"][0]`` is the condition input video. Train and val are split by asset (a hash of the
sha256), never by frame or clip, and an asset keeps its split when the table grows.

Lance is not fork-safe: the table is opened lazily in the process that reads items, and DataLoader
workers must be started with ``spawn`` (or ``forkserver``); :func:`data_loader` does that.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import lance
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.build.colour import decode_part_image
from pipelines.build.framepack import unpack
from pipelines.build.store import StoreError, open_table, sql_literal
from schemas.render import RenderSpec

Split = Literal["train", "val"]
Strategy = Literal["first", "even", "random"]
STRATEGIES = ("first", "even", "random")
MAX_PARTS = 64  # PartRules.max_parts allows at most 64

_INDEX_COLUMNS = ["sample_id", "sha256", "n_views", "n_frames", "cameras", "part_map", "render_config"]


def split_of(sha256: str, val_fraction: float, seed: int = 0) -> Split:
    """The split of an asset: a hash of (seed, sha256), so it never depends on which other assets exist."""
    unit = int.from_bytes(hashlib.sha256(f"{seed}\x00{sha256}".encode()).digest()[:8], "big") / 2**64
    return "val" if unit < val_fraction else "train"


def choose_views(stored: int, wanted: int, strategy: Strategy, rng: np.random.Generator) -> list[int]:
    """``wanted`` of ``stored`` views, increasing, always starting with view 0 (the input view).

    first: 0..wanted-1. even: spread over the orbit (i * stored // wanted). random: 0 plus a random
    subset of the others.
    """
    if strategy == "first":
        return list(range(wanted))
    if strategy == "even":
        return [i * stored // wanted for i in range(wanted)]
    rest = rng.choice(np.arange(1, stored), size=wanted - 1, replace=False)
    return [0, *sorted(int(i) for i in rest)]


def choose_frames(stored: int, wanted: int, strategy: Strategy, rng: np.random.Generator) -> list[int]:
    """``wanted`` of ``stored`` frames at a constant stride, so the frame rate stays constant.

    first: 0..wanted-1. even: the largest stride that fits, from frame 0. random: consecutive frames
    from a random start.
    """
    if strategy == "even" and wanted > 1:
        stride = (stored - 1) // (wanted - 1)
        return list(range(0, stride * wanted, stride))
    start = int(rng.integers(0, stored - wanted + 1)) if strategy == "random" else 0
    return list(range(start, start + wanted))


@dataclass(frozen=True)
class _Row:
    address: int
    sample_id: str
    sha256: str
    n_views: int
    n_frames: int
    intrinsics: np.ndarray  # [N, 3, 3]
    extrinsics: np.ndarray  # [N, 4, 4]
    elevation: np.ndarray  # [N] radians
    azimuth: np.ndarray  # [N] radians
    palette: np.ndarray  # [P, 3] uint8
    decode_limit: float


class KinematicPartsDataset(Dataset):
    """Items of ``n_views x n_frames`` from the samples of the store at ``uri``.

    ``version`` pins the Lance version (the latest when None; the one read is in ``self.version``).
    ``config_hash`` keeps one render configuration, so that every item has the same resolution.
    Rows whose grid is smaller than asked, or with more parts than ``max_parts``, are left out and
    counted by reason in ``self.excluded``. ``random`` strategies draw from (seed, epoch, index):
    call :meth:`set_epoch` each epoch (with non-persistent workers, the default of :func:`data_loader`).
    """

    def __init__(
        self,
        uri: str,
        n_views: int,
        n_frames: int,
        version: int | None = None,
        view_strategy: Strategy = "even",
        frame_strategy: Strategy = "even",
        split: Split | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        config_hash: str | None = None,
        max_parts: int = MAX_PARTS,
        storage_options: dict[str, str] | None = None,
    ):
        if n_views < 1 or n_frames < 1:
            raise ValueError(f"n_views and n_frames must be at least 1, got {n_views} and {n_frames}")
        if view_strategy not in STRATEGIES or frame_strategy not in STRATEGIES:
            raise ValueError(f"strategies must be one of {STRATEGIES}, got {view_strategy!r}, {frame_strategy!r}")
        if split not in ("train", "val", None):
            raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.uri = uri
        self.storage_options = storage_options
        self.n_views, self.n_frames = n_views, n_frames
        self.view_strategy, self.frame_strategy = view_strategy, frame_strategy
        self.split, self.val_fraction, self.seed = split, val_fraction, seed
        self.max_parts = max_parts
        self.epoch = 0
        table = open_table(uri, "samples", version, storage_options)
        self.version: int = table.version
        self.excluded: dict[str, int] = {}
        self._rows = self._index(table, config_hash)
        self._table: lance.LanceDataset | None = None
        self._table_pid = -1

    def _index(self, table: lance.LanceDataset, config_hash: str | None) -> list[_Row]:
        where = None if config_hash is None else f"config_hash = {sql_literal(config_hash)}"
        rows = table.to_table(columns=_INDEX_COLUMNS, filter=where, with_row_address=True).to_pylist()
        kept = []
        for row in sorted(rows, key=lambda r: r["sample_id"]):
            if self.split is not None and split_of(row["sha256"], self.val_fraction, self.seed) != self.split:
                continue
            reason = self._exclusion(row)
            if reason:
                self.excluded[reason] = self.excluded.get(reason, 0) + 1
                continue
            cameras = row["cameras"]
            kept.append(
                _Row(
                    address=row["_rowaddr"],
                    sample_id=row["sample_id"],
                    sha256=row["sha256"],
                    n_views=row["n_views"],
                    n_frames=row["n_frames"],
                    intrinsics=np.array([c["intrinsics"] for c in cameras], dtype=np.float32),
                    extrinsics=np.array([c["extrinsics"] for c in cameras], dtype=np.float32),
                    elevation=np.radians([c["elevation_deg"] for c in cameras]).astype(np.float32),
                    azimuth=np.radians([c["azimuth_deg"] for c in cameras]).astype(np.float32),
                    palette=np.array(row["part_map"]["palette"], dtype=np.uint8).reshape(-1, 3),
                    decode_limit=RenderSpec.model_validate_json(row["render_config"]).colours.decode_limit,
                )
            )
        if not kept:
            raise StoreError(
                "no_samples",
                f"no sample of {self.uri} v{self.version} matches (config_hash={config_hash}, split={self.split}, "
                f"excluded={self.excluded})",
            )
        return kept

    def _exclusion(self, row: dict[str, Any]) -> str | None:
        if row["n_views"] < self.n_views:
            return "too_few_views"
        if row["n_frames"] < self.n_frames:
            return "too_few_frames"
        if len(row["part_map"]["palette"]) > self.max_parts:
            return "too_many_parts"
        return None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self._rows]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"], state["_table_pid"] = None, -1  # never ship a Lance handle to another process
        return state

    def _samples(self) -> lance.LanceDataset:
        if self._table is None or self._table_pid != os.getpid():
            self._table = open_table(self.uri, "samples", self.version, self.storage_options)
            self._table_pid = os.getpid()
        return self._table

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._rows[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        views = choose_views(row.n_views, self.n_views, self.view_strategy, rng)
        frames = choose_frames(row.n_frames, self.n_frames, self.frame_strategy, rng)
        rgb, parts, alpha = (self._read(column, row, views, frames) for column in ("rgb", "parts", "alpha"))
        part_ids = decode_part_image(parts, row.palette, limit=row.decode_limit)  # the part map alone is exact
        palette = np.zeros((self.max_parts, 3), dtype=np.uint8)
        palette[: len(row.palette)] = row.palette
        return {
            "sample_id": row.sample_id,
            "sha256": row.sha256,  # the asset: evaluation's statistics resample assets
            "rgb": _to_signed_unit(rgb),
            "parts": _to_signed_unit(parts),
            "part_ids": torch.from_numpy(part_ids.astype(np.int64)),
            "alpha": torch.from_numpy(alpha[:, :, None].astype(np.float32) / 255.0),
            "cameras": {
                "intrinsics": torch.from_numpy(row.intrinsics[views]),
                "extrinsics": torch.from_numpy(row.extrinsics[views]),
                "elevation": torch.from_numpy(row.elevation[views]),
                "azimuth": torch.from_numpy(row.azimuth[views]),
            },
            "palette": torch.from_numpy(palette),
            "n_parts": torch.tensor(len(row.palette), dtype=torch.int64),
            "views": torch.tensor(views, dtype=torch.int64),
            "frames": torch.tensor(frames, dtype=torch.int64),
        }

    def _read(self, column: str, row: _Row, views: Sequence[int], frames: Sequence[int]) -> np.ndarray:
        (blob,) = self._samples().take_blobs(column, addresses=[row.address])
        with blob:
            return unpack(blob, views, frames)


def _to_signed_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [V, F, H, W, 3] -> float32 [V, F, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous().float().div_(127.5).sub_(1.0)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list strings, recurse into dicts (the cameras)."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, dict):
            batch[key] = collate(values)
        elif isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot batch {key!r} of shapes {sorted(shapes)}: pin one config_hash (one resolution)"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def data_loader(dataset: KinematicPartsDataset, batch_size: int, num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader with :func:`collate` and, when there are workers, the ``spawn`` start method."""
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", "spawn")
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, **kwargs)
