"""Evaluation of an SP4D checkpoint on held-out assets: part metrics, RGB metrics, a report.

For each item of the split (by asset, never by frame: :func:`pipelines.build.dataset.split_of` with the
run's own ``val_fraction`` and ``split_seed``), the model generates every view of the item's input
video (view 0), the part videos are decoded to part ids by nearest palette colour, and:

- parts: mIoU, ARI, F1 and mean accuracy with Hungarian matching of predicted to true parts, per
  image, then per view, per frame and overall (:func:`models.metrics.part_metrics_grid`);
- RGB: PSNR over the item's whole grid and SSIM per image, against the rendered frames;
- LPIPS, CLIP-S and the FVD family where their networks are given (:mod:`pipelines.evaluate.learned_metrics`).

Every view is scored, the input view included. Each sample's noise is seeded by (seed, item index),
so two checkpoints evaluated with the same settings see the same items and the same noise.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from models.metrics import PART_METRICS, part_metrics_grid, psnr, ssim
from models.pipeline import SP4DPipeline, SP4DSample
from models.sp4d import SP4DModel
from models.vae import LatentCodec, VAECodec, to_uint8
from pipelines.build.dataset import KinematicPartsDataset, collate
from pipelines.contact_sheet import contact_sheet, png_bytes
from pipelines.evaluate.decoding import decode_with_palette
from pipelines.evaluate.learned_metrics import (
    LEARNED_METRICS,
    LearnedMetrics,
    MetricValue,
    not_computed,
)
from pipelines.train.checkpoints import Checkpoint, CheckpointRecord, DatasetPin
from pipelines.train.latents import load_codec
from pipelines.train.loop import MODEL_FOLDER, relative_degrees, zero_context
from pipelines.version import code_version
from schemas.assets import utcnow

RGB_METRICS = ("psnr", "ssim")
ALL_METRICS = PART_METRICS + RGB_METRICS + LEARNED_METRICS
PREVIEW_TILE = 64


class EvalConfig(BaseModel):
    """How to evaluate. Dataset fields left None come from the checkpoint's record."""

    model_config = ConfigDict(extra="forbid")

    lance_uri: str | None = None
    version: int | None = Field(None, description="samples version; None: the version the checkpoint trained on")
    split: Literal["val", "train"] = "val"
    max_samples: int | None = Field(8, ge=1)
    inference_steps: int = Field(25, ge=1)
    seed: int = Field(0, ge=0)
    # Conventional places, so that weights dropped there are found; see pipelines.evaluate.learned_metrics.
    lpips_path: str | None = Field("weights/lpips.pt", description="TorchScript LPIPS network")
    clip_path: str | None = Field("weights/clip_image_encoder.pt", description="TorchScript CLIP image encoder")
    i3d_path: str | None = Field("weights/i3d_torchscript.pt", description="TorchScript I3D detector for the FVD family")


class EvalReport(BaseModel):
    checkpoint: str
    step: int
    dataset: DatasetPin
    split: str
    sample_ids: list[str]
    inference_steps: int
    seed: int
    metrics: dict[str, MetricValue] = Field(description="every name in ALL_METRICS: a finite float or 'not computed: ...'")
    per_view: list[dict[str, MetricValue]] = Field(default_factory=list, description="part metrics of each view")
    per_frame: list[dict[str, MetricValue]] = Field(default_factory=list, description="part metrics of each frame")
    code_version: str
    trained_with_code_version: str
    seconds: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


def evaluation_dataset(record: CheckpointRecord, config: EvalConfig) -> tuple[KinematicPartsDataset, DatasetPin]:
    """The items to evaluate on: the run's own split rule, at the asked (or the trained) version."""
    trained = record.dataset
    pin = trained.model_copy(update={"lance_uri": config.lance_uri or trained.lance_uri, "version": config.version or trained.version})
    dataset = KinematicPartsDataset(
        pin.lance_uri,
        n_views=record.config.n_views,
        n_frames=record.config.n_frames,
        version=pin.version,
        split=config.split,
        val_fraction=record.config.val_fraction,
        seed=record.config.split_seed,
        config_hash=pin.config_hash,
    )
    return dataset, pin


def _codec(vae_path: str | None, device: str) -> LatentCodec:
    codec = load_codec(vae_path)
    if isinstance(codec, VAECodec):
        codec.vae.to(device)
    return codec


def load_model(checkpoint: Checkpoint, device: torch.device | str) -> SP4DModel:
    return SP4DModel.from_pretrained(checkpoint.path / MODEL_FOLDER).to(device).eval()


def generate(model: SP4DModel, codec: LatentCodec, batch: dict[str, Any], steps: int, seed: int) -> SP4DSample:
    """Generate every view of the batch's input video (view 0)."""
    device = model.device
    video = to_uint8(batch["rgb"][:, 0])  # [B, F, H, W, 3]
    cameras = batch["cameras"]
    context = zero_context(len(video), model.config.branch_config["context_dim"], device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return SP4DPipeline(model, codec)(
        video,
        relative_degrees(cameras["elevation"]),
        relative_degrees(cameras["azimuth"]),
        context,
        num_inference_steps=steps,
        generator=generator,
    )


def score(sample: SP4DSample, batch: dict[str, Any]) -> dict[str, Any]:
    """Part and RGB metrics of the first item of a batch.

    Generated colours are never exact, so each pixel takes the nearest palette colour or the black
    background (no distance limit): the dataset's exact-decoding limit would call most of them unknown.
    """
    true_rgb = to_uint8(batch["rgb"][0])  # [V, F, H, W, 3]
    palette = batch["palette"][0][: int(batch["n_parts"][0])].numpy()
    parts = part_metrics_grid(decode_with_palette(sample.parts[0], palette), batch["part_ids"][0].numpy())
    generated = sample.rgb[0]
    return {
        **parts,
        "psnr": psnr(generated, true_rgb),
        "ssim": ssim(generated.reshape(-1, *generated.shape[2:]), true_rgb.reshape(-1, *true_rgb.shape[2:])),
    }


def evaluate_checkpoint(
    checkpoint: Checkpoint, config: EvalConfig, on_sample: Callable[[int, int], None] | None = None
) -> EvalReport:
    """Generate and score ``max_samples`` items of the split with one checkpoint."""
    started = time.monotonic()
    record = checkpoint.record()
    dataset, pin = evaluation_dataset(record, config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(checkpoint, device)
    codec = _codec(record.config.vae_path, device)
    learned = LearnedMetrics(config.lpips_path, config.clip_path, config.i3d_path)
    count = len(dataset) if config.max_samples is None else min(config.max_samples, len(dataset))
    scores, sample_ids = [], []
    for index in range(count):
        batch = collate([dataset[index]])
        sample = generate(model, codec, batch, config.inference_steps, config.seed + index)
        scores.append(score(sample, batch))
        learned.add(sample.rgb[0], to_uint8(batch["rgb"][0]))
        sample_ids.append(batch["sample_id"][0])
        if on_sample:
            on_sample(index + 1, count)
    metrics: dict[str, MetricValue] = {name: _mean([s[name] for s in scores], name) for name in PART_METRICS + RGB_METRICS}
    metrics.update(learned.compute())
    n_views, n_frames = record.config.n_views, record.config.n_frames
    return EvalReport(
        checkpoint=str(checkpoint.path),
        step=checkpoint.step,
        dataset=pin,
        split=config.split,
        sample_ids=sample_ids,
        inference_steps=config.inference_steps,
        seed=config.seed,
        metrics=metrics,
        per_view=[{m: _mean([s["per_view"][v][m] for s in scores], m) for m in PART_METRICS} for v in range(n_views)],
        per_frame=[{m: _mean([s["per_frame"][f][m] for s in scores], m) for m in PART_METRICS} for f in range(n_frames)],
        code_version=code_version(),
        trained_with_code_version=record.code_version,
        seconds=time.monotonic() - started,
    )


def _mean(values: list[float], name: str) -> MetricValue:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        if any(math.isinf(v) for v in values):
            return not_computed(f"{name} is infinite: generated and true images are identical")
        return not_computed(f"no image with true foreground to score {name}")
    return float(np.mean(finite))


# ---------------------------------------------------------------------------------- reporting


def report_markdown(report: EvalReport, baseline: EvalReport | None = None) -> str:
    """A markdown table of every metric; with a baseline, the two checkpoints side by side."""
    reports = [report] + ([baseline] if baseline else [])
    header = "| metric | " + " | ".join(f"step {r.step}" for r in reports) + " |"
    lines = [
        f"## SP4D evaluation: {len(report.sample_ids)} {report.split} samples of `{report.dataset.lance_uri}` "
        f"v{report.dataset.version} ({report.inference_steps} sampler steps, seed {report.seed})",
        "",
        "\n".join(f"- step {r.step}: `{r.checkpoint}`" for r in reports),
        "",
        header,
        "|---" * (len(reports) + 1) + "|",
    ]
    for name in ALL_METRICS:
        lines.append(f"| {name} | " + " | ".join(_cell(r.metrics.get(name)) for r in reports) + " |")
    lines += ["", "Part metrics per view (mIoU / ARI):", "", "| view | " + " | ".join(f"step {r.step}" for r in reports) + " |"]
    lines.append("|---" * (len(reports) + 1) + "|")
    for v in range(len(report.per_view)):
        cells = [f"{_cell(r.per_view[v]['miou'])} / {_cell(r.per_view[v]['ari'])}" for r in reports]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: MetricValue | None) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def preview_png(batch: dict[str, Any], sample: SP4DSample, tile: int = PREVIEW_TILE) -> bytes:
    """Four rows per view (true RGB, generated RGB, generated parts, true parts), frames left to right."""
    grids = [
        ("true RGB", to_uint8(batch["rgb"][0])),
        ("generated RGB", sample.rgb[0]),
        ("generated parts", sample.parts[0]),
        ("true parts", to_uint8(batch["parts"][0])),
    ]
    n_views, n_frames = grids[0][1].shape[:2]
    rows = [(f"v{v} {title}", list(grid[v])) for v in range(n_views) for title, grid in grids]
    return png_bytes(contact_sheet(rows, tile=tile, column_labels=[f"frame {f}" for f in range(n_frames)]))


def preview(checkpoint: Checkpoint, inference_steps: int, seed: int = 0) -> bytes:
    """:func:`preview_png` of the first held-out item (the first training item when none is held out)."""
    record = checkpoint.record()
    pin = record.dataset
    split = "val" if pin.n_val else "train"
    dataset, pin = evaluation_dataset(record, EvalConfig(split=split))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    codec = _codec(record.config.vae_path, device)
    batch = collate([dataset[0]])
    sample = generate(load_model(checkpoint, device), codec, batch, inference_steps, seed)
    return preview_png(batch, sample)


def write_report(report: EvalReport, baseline: EvalReport | None, folder: Path) -> tuple[Path, Path]:
    """``<folder>/step-N[-vs-step-M].json`` and ``.md``; the JSON holds the report and the baseline's."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step-{report.step:08d}" + (f"-vs-step-{baseline.step:08d}" if baseline else "")
    data = EvalComparison(report=report, baseline=baseline)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_text(data.model_dump_json(indent=2))
    md_path.write_text(report_markdown(report, baseline))
    return json_path, md_path


class EvalComparison(BaseModel):
    """The JSON file of an evaluation: one checkpoint's report, and its baseline's when compared."""

    report: EvalReport
    baseline: EvalReport | None = None
