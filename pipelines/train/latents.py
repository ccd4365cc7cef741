"""VAE latents of the samples, computed once into a ``latents`` Lance table beside ``samples``.

One row per (sample, codec): ``latent_id`` = digest(sample_id, vae_id) is the primary key. A sample id
names fixed content (the store inserts a key once and never rewrites it), so latents computed from one
dataset version serve every later version; ``dataset_version`` records the version they were first
computed from. A refresh therefore encodes only its new samples, and a second precompute of the same
version encodes nothing.

Each row holds the whole stored grid of a sample, ``rgb`` and ``parts``, as raw little-endian float16
``[V, F, C, h, w]`` in Lance blob columns: a reader fetches the byte ranges of just the views and frames
it needs (:class:`LatentReader`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Sequence

import lance
import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, Field
from torch.utils.data import Dataset

from models.vae import LatentCodec, PixelCodec, VAECodec, to_model_range
from models.weights import load_vae
from pipelines.build.dataset import KinematicPartsDataset
from pipelines.build.framepack import unpack
from pipelines.build.store import (
    PRIMARY_KEY_METADATA,
    DatasetStore,
    StoreError,
    sql_literal,
    table_uri,
)
from pipelines.train.checkpoints import DatasetPin
from pipelines.version import code_version
from schemas.assets import utcnow
from schemas.tables import arrow_schema, to_row

LATENTS = "latents"
LATENT_DTYPE = np.dtype("<f2")
ENCODE_IMAGES = 16  # images per codec call: bounds activation memory
COMMIT_SAMPLES = 8  # samples per commit: a killed precompute redoes at most this many


class LatentRow(BaseModel):
    """One row of the ``latents`` table."""

    latent_id: str = Field(description="latent_key(sample_id, vae_id)")
    sample_id: str
    vae_id: str
    dataset_version: int = Field(description="the samples version these latents were computed from")
    n_views: int
    n_frames: int
    channels: int
    height: int
    width: int
    dtype: str = LATENT_DTYPE.str
    rgb: bytes = Field(json_schema_extra={"blob": True})
    parts: bytes = Field(json_schema_extra={"blob": True})
    code_version: str
    created_at: datetime = Field(default_factory=utcnow)


def _latents_schema() -> pa.Schema:
    schema = arrow_schema(LatentRow)
    key = schema.get_field_index("latent_id")
    return schema.set(key, schema.field(key).with_nullable(False).with_metadata(PRIMARY_KEY_METADATA))


LATENTS_SCHEMA = _latents_schema()


def latent_key(sample_id: str, vae_id: str) -> str:
    return hashlib.sha256(f"{sample_id}\x00{vae_id}".encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------- codec


def load_codec(vae_path: str | None) -> LatentCodec:
    """The shared frozen VAE from a local folder, or the identity codec (pixel space) for None."""
    return PixelCodec() if vae_path is None else VAECodec(load_vae(vae_path))


def codec_id(codec: LatentCodec) -> str:
    """What the latents depend on: the VAE class, configuration and weights (a content hash)."""
    if isinstance(codec, PixelCodec):
        return "pixel"
    vae = codec.vae
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(vae).__name__}-{digest.hexdigest()[:16]}"


def encode_images(codec: LatentCodec, images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float16 latents [..., C, h, w], ``ENCODE_IMAGES`` at a time."""
    flat = images.reshape(-1, *images.shape[-3:])
    chunks = [codec.encode(to_model_range(flat[i : i + ENCODE_IMAGES])).float().cpu() for i in range(0, len(flat), ENCODE_IMAGES)]
    latents = torch.cat(chunks).numpy().astype(LATENT_DTYPE)
    return latents.reshape(*images.shape[:-3], *latents.shape[1:])


# ------------------------------------------------------------------------------------- writing


@dataclass
class LatentReport:
    vae_id: str
    wanted: int = 0
    encoded: int = 0
    already: int = 0
    latents_version: int | None = None


def open_latents(uri: str, version: int | None = None) -> lance.LanceDataset:
    """The ``latents`` table of the store at ``uri``, created empty when missing."""
    path = table_uri(uri, LATENTS)  # type: ignore[arg-type]
    try:
        return lance.dataset(path, version=version)
    except ValueError:
        if version is not None:
            raise StoreError("version_not_found", f"{path} has no version {version}") from None
    try:
        lance.write_dataset(LATENTS_SCHEMA.empty_table(), path, mode="create")
    except OSError as exc:  # another process created it first
        if "already exists" not in str(exc):
            raise
    return lance.dataset(path)


def existing_latents(uri: str, vae_id: str, version: int | None = None) -> dict[str, int]:
    """sample_id -> row address of the latents of ``vae_id``."""
    table = open_latents(uri, version).to_table(
        columns=["sample_id"], filter=f"vae_id = {sql_literal(vae_id)}", with_row_address=True
    )
    return dict(zip(table.column("sample_id").to_pylist(), table.column("_rowaddr").to_pylist()))


def precompute_latents(pin: DatasetPin, codec: LatentCodec, vae_id: str) -> LatentReport:
    """Encode every sample of the pinned version and render configuration that has no latents yet.

    Commits every ``COMMIT_SAMPLES`` samples (insert-if-new on ``latent_id``), so a killed run keeps
    what it committed and a rerun encodes only the rest.
    """
    store = DatasetStore(pin.lance_uri)
    wanted = sorted(store.existing_sample_ids(pin.config_hash, pin.version))
    done = existing_latents(pin.lance_uri, vae_id)
    todo = [s for s in wanted if s not in done]
    report = LatentReport(vae_id=vae_id, wanted=len(wanted), already=len(wanted) - len(todo))
    for start in range(0, len(todo), COMMIT_SAMPLES):
        ids = todo[start : start + COMMIT_SAMPLES]
        rows = _encode_samples(store, pin, codec, vae_id, ids)
        report.encoded += _insert_new(pin.lance_uri, rows)
    report.latents_version = open_latents(pin.lance_uri).version
    return report


def _encode_samples(store: DatasetStore, pin: DatasetPin, codec: LatentCodec, vae_id: str, ids: Sequence[str]) -> Iterator[LatentRow]:
    rgb_blobs = store.take_blobs("rgb", ids, pin.version)
    part_blobs = store.take_blobs("parts", ids, pin.version)
    for sample_id, rgb_blob, part_blob in zip(ids, rgb_blobs, part_blobs):
        with rgb_blob, part_blob:
            rgb, parts = encode_images(codec, unpack(rgb_blob)), encode_images(codec, unpack(part_blob))
        n_views, n_frames, channels, height, width = rgb.shape
        yield LatentRow(
            latent_id=latent_key(sample_id, vae_id),
            sample_id=sample_id,
            vae_id=vae_id,
            dataset_version=pin.version,
            n_views=n_views,
            n_frames=n_frames,
            channels=channels,
            height=height,
            width=width,
            rgb=rgb.tobytes(),
            parts=parts.tobytes(),
            code_version=code_version(),
        )


def _insert_new(uri: str, rows: Iterator[LatentRow]) -> int:
    table = pa.Table.from_pylist([to_row(r) for r in rows], schema=LATENTS_SCHEMA)
    if not len(table):
        return 0
    stats = open_latents(uri).merge_insert("latent_id").when_not_matched_insert_all().execute(table)
    return int(stats["num_inserted_rows"])


# ------------------------------------------------------------------------------------- reading


class LatentReader:
    """Reads the latents of chosen views and frames of a sample, fetching only their byte ranges.

    Opens the table lazily in the reading process (Lance handles must not cross a fork).
    """

    def __init__(self, uri: str, vae_id: str, version: int):
        self.uri, self.vae_id, self.version = uri, vae_id, version
        table = open_latents(uri, version).to_table(
            columns=["sample_id", "n_views", "n_frames", "channels", "height", "width", "dtype"],
            filter=f"vae_id = {sql_literal(vae_id)}",
            with_row_address=True,
        )
        self._rows: dict[str, dict[str, Any]] = {r["sample_id"]: r for r in table.to_pylist()}
        self._table: lance.LanceDataset | None = None
        self._pid = -1

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._rows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None, "_pid": -1}

    def read(self, sample_id: str, views: Sequence[int], frames: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (rgb, parts) latents [len(views), len(frames), C, h, w]."""
        row = self._rows.get(sample_id)
        if row is None:
            raise StoreError("latents_missing", f"no {self.vae_id} latents for sample {sample_id} in latents v{self.version}")
        if self._table is None or self._pid != os.getpid():
            self._table, self._pid = open_latents(self.uri, self.version), os.getpid()
        dtype = np.dtype(row["dtype"])
        image = row["channels"] * row["height"] * row["width"]
        ranges = [((v * row["n_frames"] + f) * image * dtype.itemsize, image * dtype.itemsize) for v in views for f in frames]
        shape = (len(views), len(frames), row["channels"], row["height"], row["width"])
        out = []
        for column in ("rgb", "parts"):
            (blob,) = self._table.take_blobs(column, addresses=[row["_rowaddr"]])
            with blob:
                data = b"".join(blob.read_ranges(ranges))
            out.append(torch.from_numpy(np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)))
        return out[0], out[1]


class LatentDataset(Dataset):
    """:class:`KinematicPartsDataset` items with ``rgb_latents`` and ``part_latents`` [V, F, C, h, w] added
    for the item's views and frames."""

    def __init__(self, images: KinematicPartsDataset, latents: LatentReader):
        missing = [s for s in images.sample_ids if s not in latents]
        if missing:
            raise StoreError(
                "latents_missing", f"{len(missing)} samples have no {latents.vae_id} latents (e.g. {missing[:3]}); precompute them first"
            )
        self.images, self.latents = images, latents

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.images.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        rgb, parts = self.latents.read(item["sample_id"], item["views"].tolist(), item["frames"].tolist())
        return {**item, "rgb_latents": rgb, "part_latents": parts}
