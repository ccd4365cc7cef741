"""Evaluation of an SP4D checkpoint on held-out assets, beside baselines, with intervals.

For each item of the split (by asset, never by frame: :func:`pipelines.build.dataset.split_of` with the
run's own ``val_fraction`` and ``split_seed``), the model generates every view of the item's input
video (view 0), and the report scores, side by side (:data:`METHODS`):

- ``model``: its part videos decoded **without the palette** (:func:`pipelines.evaluate.decoding.decode_by_clustering`);
- ``model_oracle``: the same videos decoded with the asset's true palette, an upper bound that
  knows the number and colours of the parts;
- ``rgb_clustering``: the training-free baseline, parts from clustering the true RGB frames
  (:mod:`pipelines.evaluate.baselines`);
- ``ceiling``: the ground-truth part maps and RGB through the codec round trip and the palette-free
  decoding: what a perfect generator could reach;
- ``sam2``: only with SAM 2 weights on disk; otherwise "not computed" with the reason.

Part metrics (every view; pixels of the union of true and predicted foreground): mIoU, ARI, F1 and
mean accuracy with per-image Hungarian matching, the same with one matching per sample (``seq_*``,
:func:`models.metrics.part_metrics_sequence`), and the identity consistency across views and frames
(:func:`models.metrics.part_consistency`). RGB metrics (PSNR, SSIM, LPIPS, CLIP-S, FVD) score the
novel views only (views 1..V-1); the input view, which the model is given, is reported apart
(``psnr_input``, ``ssim_input``). Every metric is an :class:`~pipelines.evaluate.statistics.Estimate`:
mean over assets, sample count, 95 % bootstrap interval over assets. FVD is set-level (no interval)
and computed only above its stated threshold.

Each sample's noise is seeded by (seed, item index), so two checkpoints evaluated with the same
settings see the same items and the same noise, and are compared pairwise (:func:`compare`).
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

from models.metrics import (
    CONSISTENCY_METRICS,
    PART_METRICS,
    part_consistency,
    part_metrics_grid,
    part_metrics_sequence,
    psnr,
    ssim,
)
from models.image_encoder import OpenCLIPImageEncoder
from models.pipeline import SP4DPipeline, SP4DSample
from models.sp4d import SP4DModel
from models.vae import LatentCodec, VAECodec, to_uint8
from pipelines.build.dataset import KinematicPartsDataset, collate
from pipelines.contact_sheet import contact_sheet, png_bytes
from pipelines.evaluate.baselines import rgb_clustering_parts, round_trip, sam2_status
from pipelines.evaluate.decoding import decode_by_clustering, decode_with_palette
from pipelines.evaluate.learned_metrics import (
    FVD_METRICS,
    FVD_MIN_FRAMES,
    FVD_MIN_VIDEOS,
    LEARNED_METRICS,
    LearnedMetrics,
    MetricValue,
    not_computed,
)
from pipelines.evaluate.statistics import RESAMPLES, Difference, Estimate, difference, estimate
from pipelines.train.checkpoints import Checkpoint, CheckpointRecord, DatasetPin
from pipelines.train.latents import load_codec
from pipelines.train.loop import MODEL_FOLDER, conditioning_encoder, relative_degrees
from pipelines.version import code_version
from schemas.assets import utcnow

SEQUENCE_METRICS = tuple(f"seq_{m}" for m in PART_METRICS)
SEGMENTATION_METRICS = PART_METRICS + SEQUENCE_METRICS + CONSISTENCY_METRICS
RGB_METRICS = ("psnr", "ssim")  # novel views only
INPUT_VIEW_METRICS = ("psnr_input", "ssim_input")
ALL_METRICS = SEGMENTATION_METRICS + RGB_METRICS + INPUT_VIEW_METRICS + LEARNED_METRICS
METHODS = {
    "rgb_clustering": "RGB clustering (training-free baseline)",
    "model": "model (palette-free decoding)",
    "model_oracle": "model, true palette (oracle, upper bound)",
    "ceiling": "ground truth through codec + decoding (ceiling)",
    "sam2": "SAM 2",
}
PREVIEW_TILE = 64

Entry = Estimate | str  # a metric's estimate, or "not computed: <why>"


class EvalConfig(BaseModel):
    """How to evaluate. Dataset fields left None come from the checkpoint's record."""

    model_config = ConfigDict(extra="forbid")

    lance_uri: str | None = None
    version: int | None = Field(None, description="samples version; None: the version the checkpoint trained on")
    split: Literal["val", "train"] = "val"
    max_samples: int | None = Field(8, ge=1)
    inference_steps: int = Field(25, ge=1)
    seed: int = Field(0, ge=0)
    bootstrap_resamples: int = Field(RESAMPLES, ge=100, description="bootstrap draws for the 95 % intervals over assets")
    fvd_min_videos: int = Field(FVD_MIN_VIDEOS, ge=2, description="FVD only from this many videos a side")
    fvd_min_frames: int = Field(FVD_MIN_FRAMES, ge=1, description="FVD only on videos of this many frames")
    # Conventional places, so that weights dropped there are found; see pipelines.evaluate.learned_metrics.
    lpips_path: str | None = Field("weights/lpips.pt", description="TorchScript LPIPS network")
    clip_path: str | None = Field("weights/clip_image_encoder.pt", description="TorchScript CLIP image encoder")
    i3d_path: str | None = Field("weights/i3d_torchscript.pt", description="TorchScript I3D detector for the FVD family")
    sam2_path: str | None = Field("weights/sam2", description="SAM 2 weights for the segmentation baseline")


class SampleScores(BaseModel):
    """One item's values: method -> metric -> value (None where not finite or not computed)."""

    sample_id: str
    asset: str
    values: dict[str, dict[str, float | None]]


class EvalReport(BaseModel):
    checkpoint: str
    step: int
    dataset: DatasetPin
    split: str
    sample_ids: list[str]
    n_assets: int = 0
    inference_steps: int
    seed: int
    metrics: dict[str, MetricValue] = Field(
        description="the model's headline values (palette-free decoding; RGB on novel views): every name in ALL_METRICS"
    )
    methods: dict[str, dict[str, Entry]] = Field(
        default_factory=dict, description="method -> metric -> estimate with count and interval, or 'not computed: ...'"
    )
    per_view: list[dict[str, MetricValue]] = Field(default_factory=list, description="the model's part metrics of each view")
    per_frame: list[dict[str, MetricValue]] = Field(default_factory=list, description="the model's part metrics of each frame")
    samples: list[SampleScores] = Field(default_factory=list, description="every item's values, for pairwise comparison")
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


def load_image_encoder_of(record: CheckpointRecord, model: SP4DModel) -> OpenCLIPImageEncoder | None:
    """The image encoder the run trained with (None for the tiny demo, which trained on a zero context)."""
    encoder = conditioning_encoder(record.config, model.config.branch_config["context_dim"])
    return None if encoder is None else encoder.to(model.device).eval()


def generate(
    model: SP4DModel,
    codec: LatentCodec,
    batch: dict[str, Any],
    steps: int,
    seed: int,
    image_encoder: OpenCLIPImageEncoder | None = None,
) -> SP4DSample:
    """Generate every view of the batch's input video (view 0), conditioned as the run was trained."""
    video = to_uint8(batch["rgb"][:, 0])  # [B, F, H, W, 3]
    cameras = batch["cameras"]
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return SP4DPipeline(model, codec, image_encoder=image_encoder)(
        video,
        relative_degrees(cameras["elevation"]),
        relative_degrees(cameras["azimuth"]),
        num_inference_steps=steps,
        generator=generator,
    )


def part_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Segmentation metrics of one sample's [V, F, H, W] label grids: per-image and per-sample
    matching, consistency, and the per-view / per-frame breakdown of both matchings."""
    image, sequence = part_metrics_grid(pred, true), part_metrics_sequence(pred, true)

    def merged(own: dict[str, float], seq: dict[str, float]) -> dict[str, float]:
        return {**{m: own[m] for m in PART_METRICS}, **{f"seq_{m}": seq[m] for m in PART_METRICS}}

    return {
        **merged(image, sequence),
        **part_consistency(pred, true),
        "per_view": [merged(a, b) for a, b in zip(image["per_view"], sequence["per_view"])],
        "per_frame": [merged(a, b) for a, b in zip(image["per_frame"], sequence["per_frame"])],
    }


def rgb_scores(generated: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """PSNR over the novel views' pixels and SSIM per novel-view image; the input view (0) apart."""
    flat = lambda grid: grid.reshape(-1, *grid.shape[2:])  # noqa: E731
    novel = {"psnr": math.nan, "ssim": math.nan}
    if len(true) > 1:
        novel = {"psnr": psnr(generated[1:], true[1:]), "ssim": ssim(flat(generated[1:]), flat(true[1:]))}
    return {**novel, "psnr_input": psnr(generated[0], true[0]), "ssim_input": ssim(generated[0], true[0])}


def score(sample: SP4DSample, batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model's scores on the first item of a batch: ``model`` (palette-free decoding, RGB) and
    ``model_oracle`` (decoded with the item's true palette)."""
    true_ids = batch["part_ids"][0].numpy()
    palette = batch["palette"][0][: int(batch["n_parts"][0])].numpy()
    parts = sample.parts[0]
    return {
        "model": {**part_scores(decode_by_clustering(parts), true_ids), **rgb_scores(sample.rgb[0], to_uint8(batch["rgb"][0]))},
        "model_oracle": part_scores(decode_with_palette(parts, palette), true_ids),
    }


def score_baselines(batch: dict[str, Any], codec: LatentCodec, device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """``rgb_clustering`` (parts from the true RGB frames) and ``ceiling`` (the truth through the
    codec round trip, part maps decoded without the palette) on the first item of a batch."""
    true_ids = batch["part_ids"][0].numpy()
    true_rgb, true_parts = to_uint8(batch["rgb"][0]), to_uint8(batch["parts"][0])
    ceiling_parts = decode_by_clustering(round_trip(codec, true_parts, device))
    return {
        "rgb_clustering": part_scores(rgb_clustering_parts(true_rgb), true_ids),
        "ceiling": {**part_scores(ceiling_parts, true_ids), **rgb_scores(round_trip(codec, true_rgb, device), true_rgb)},
    }


def evaluate_checkpoint(
    checkpoint: Checkpoint, config: EvalConfig, on_sample: Callable[[int, int], None] | None = None
) -> EvalReport:
    """Generate and score ``max_samples`` items of the split with one checkpoint, beside the baselines."""
    started = time.monotonic()
    record = checkpoint.record()
    dataset, pin = evaluation_dataset(record, config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(checkpoint, device)
    codec = _codec(record.config.vae_path, device)
    encoder = load_image_encoder_of(record, model)
    learned = LearnedMetrics(config.lpips_path, config.clip_path, config.i3d_path, config.fvd_min_videos, config.fvd_min_frames)
    count = len(dataset) if config.max_samples is None else min(config.max_samples, len(dataset))
    raw: list[dict[str, dict[str, Any]]] = []
    samples: list[SampleScores] = []
    for index in range(count):
        batch = collate([dataset[index]])
        sample = generate(model, codec, batch, config.inference_steps, config.seed + index, encoder)
        rows = {**score(sample, batch), **score_baselines(batch, codec, device)}
        if sample.rgb.shape[1] > 1:  # novel views only
            rows["model"].update(learned.add(sample.rgb[0][1:], to_uint8(batch["rgb"][0])[1:]))
        else:
            rows["model"].update({name: not_computed("no novel view: items of one view") for name in ("lpips", "clip_s")})
        raw.append(rows)
        samples.append(SampleScores(sample_id=batch["sample_id"][0], asset=batch["sha256"][0], values=_stored(rows)))
        if on_sample:
            on_sample(index + 1, count)
    methods = summarise(raw, [s.asset for s in samples], config.bootstrap_resamples)
    fvd = learned.compute()
    n_assets = len({s.asset for s in samples})
    for name in FVD_METRICS:  # set-level: one number for all videos, no interval
        value = fvd[name]
        methods["model"][name] = value if isinstance(value, str) else Estimate(value=value, n_samples=count, n_assets=n_assets)
    methods["sam2"] = {name: sam2_status(config.sam2_path) for name in SEGMENTATION_METRICS}
    return EvalReport(
        checkpoint=str(checkpoint.path),
        step=checkpoint.step,
        dataset=pin,
        split=config.split,
        sample_ids=[s.sample_id for s in samples],
        n_assets=n_assets,
        inference_steps=config.inference_steps,
        seed=config.seed,
        metrics={name: _headline(methods["model"].get(name)) for name in ALL_METRICS},
        methods=methods,
        per_view=_breakdown(raw, "per_view", record.config.n_views),
        per_frame=_breakdown(raw, "per_frame", record.config.n_frames),
        samples=samples,
        code_version=code_version(),
        trained_with_code_version=record.code_version,
        seconds=time.monotonic() - started,
    )


def summarise(raw: list[dict[str, dict[str, Any]]], assets: list[str], resamples: int = RESAMPLES) -> dict[str, dict[str, Entry]]:
    """Per-sample rows (method -> metric -> value) -> method -> metric -> estimate over assets."""
    methods: dict[str, dict[str, Entry]] = {}
    for method in METHODS:
        names = [m for m in ALL_METRICS if raw and m in raw[0].get(method, {})]
        for name in names:
            values = [r[method][name] for r in raw]
            reasons = [v for v in values if isinstance(v, str)]
            methods.setdefault(method, {})[name] = reasons[0] if reasons else estimate(values, assets, name, resamples)
    return methods


def _stored(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The JSON form of one item's values: finite floats, None for the rest."""
    return {
        method: {m: (float(v) if isinstance(v, float) and math.isfinite(v) else None) for m, v in metrics.items() if m in ALL_METRICS}
        for method, metrics in rows.items()
    }


def _breakdown(raw: list[dict[str, dict[str, Any]]], key: str, count: int) -> list[dict[str, MetricValue]]:
    """The model's part metrics of each view (or frame), mean over samples."""
    names = PART_METRICS + SEQUENCE_METRICS
    return [{m: _mean([r["model"][key][i][m] for r in raw], m) for m in names} for i in range(count)]


def _headline(entry: Entry | None) -> MetricValue:
    if entry is None:
        return not_computed("not scored for the model")
    return entry if isinstance(entry, str) else entry.value


def _mean(values: list[float], name: str) -> MetricValue:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else not_computed(f"no image with true foreground to score {name}")


def compare(report: EvalReport, baseline: EvalReport) -> dict[str, dict[str, Difference | str]]:
    """Per method and metric: ``report`` minus ``baseline`` on the items both scored, with a paired
    bootstrap interval over assets and whether the two runs' own intervals overlap."""
    theirs = {s.sample_id: s for s in baseline.samples}
    shared = [s for s in report.samples if s.sample_id in theirs]
    assets = [s.asset for s in shared]
    out: dict[str, dict[str, Difference | str]] = {}
    for method in ("model", "model_oracle"):
        for name, own in report.methods.get(method, {}).items():
            other = baseline.methods.get(method, {}).get(name)
            if name in FVD_METRICS or other is None:
                continue
            if isinstance(own, str) or isinstance(other, str):
                out.setdefault(method, {})[name] = own if isinstance(own, str) else other
                continue
            mine = [s.values[method].get(name) for s in shared]
            base = [theirs[s.sample_id].values[method].get(name) for s in shared]
            out.setdefault(method, {})[name] = difference(mine, base, assets, own, other)
    return out


# ---------------------------------------------------------------------------------- reporting


PART_COLUMNS = ("rgb_clustering", "model", "model_oracle", "ceiling", "sam2")
RGB_COLUMNS = ("model", "ceiling")


def report_markdown(report: EvalReport, baseline: EvalReport | None = None) -> str:
    """The report as markdown: parts (baselines, model, oracle, ceiling side by side), RGB (novel
    views; the input view apart), per view; with a baseline checkpoint, the pairwise differences."""
    reports = [report] + ([baseline] if baseline else [])
    lines = [
        f"## SP4D evaluation: {len(report.sample_ids)} {report.split} samples ({report.n_assets} assets) of "
        f"`{report.dataset.lance_uri}` v{report.dataset.version} ({report.inference_steps} sampler steps, seed {report.seed})",
        "",
        "\n".join(f"- step {r.step}: `{r.checkpoint}`" for r in reports),
        "",
        "Cells: mean over assets [95 % bootstrap interval over assets] (n = samples scored). Part metrics: every "
        "view, pixels of the union of true and predicted foreground; `seq_*`: one part matching per sample across "
        "all views and frames; `consistency*`: fraction of part pixels whose matched identity stays the same "
        "(across the sample / across views / across frames). The model's part maps are decoded without the "
        "palette; the oracle column uses the true palette (an upper bound). RGB metrics: novel views only; "
        "`*_input`: the input view, which the model is given. docs/training.md explains each metric.",
    ]
    for r in reports:
        lines += ["", f"### Parts, step {r.step}", ""]
        lines += _table("metric", [METHODS[m] for m in PART_COLUMNS], SEGMENTATION_METRICS, lambda name: [r.methods.get(m, {}).get(name) for m in PART_COLUMNS])
        lines += ["", f"### RGB, step {r.step}", ""]
        rgb_names = RGB_METRICS + LEARNED_METRICS + INPUT_VIEW_METRICS
        lines += _table("metric", [METHODS[m] for m in RGB_COLUMNS], rgb_names, lambda name: [r.methods.get(m, {}).get(name) for m in RGB_COLUMNS])
    if baseline:
        differences = compare(report, baseline)
        lines += [
            "",
            f"### Step {report.step} against step {baseline.step} (same items, same noise)",
            "",
            "Difference: step "
            f"{report.step} minus step {baseline.step}, with its paired bootstrap interval over assets; "
            "'overlap': whether the two runs' own intervals overlap.",
            "",
            f"| method | metric | step {report.step} | step {baseline.step} | difference [95 %] | overlap |",
            "|---|---|---|---|---|---|",
        ]
        for method, rows in differences.items():
            for name, diff in rows.items():
                cells = [_cell(report.methods[method][name]), _cell(baseline.methods[method][name]), _diff_cell(diff)]
                overlap = "-" if isinstance(diff, str) or diff.intervals_overlap is None else ("yes" if diff.intervals_overlap else "no")
                lines.append(f"| {method} | {name} | " + " | ".join(cells) + f" | {overlap} |")
    lines += ["", "### The model's mIoU per view (per-image / per-sample matching; mean over samples)", ""]
    lines += _table(
        "view",
        [f"step {r.step}" for r in reports],
        range(len(report.per_view)),
        lambda v: [f"{_cell(r.per_view[v]['miou'])} / {_cell(r.per_view[v]['seq_miou'])}" for r in reports],
    )
    return "\n".join(lines) + "\n"


def _table(first: str, columns: list[str], rows: Any, cells: Callable[[Any], list[Any]]) -> list[str]:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_cell(c) for c in cells(row)) + " |")
    return lines


def _cell(value: Entry | MetricValue | None) -> str:
    if isinstance(value, Estimate):
        interval = f" [{value.low:.4f}, {value.high:.4f}]" if value.low is not None else ""
        return f"{value.value:.4f}{interval} (n={value.n_samples})"
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _diff_cell(diff: Difference | str) -> str:
    if isinstance(diff, str):
        return diff
    interval = f" [{diff.low:+.4f}, {diff.high:+.4f}]" if diff.low is not None else " (one asset: no interval)"
    return f"{diff.value:+.4f}{interval}"


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
    model = load_model(checkpoint, device)
    sample = generate(model, codec, batch, inference_steps, seed, load_image_encoder_of(record, model))
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
