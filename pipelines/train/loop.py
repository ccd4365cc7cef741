"""The SP4D training loop on ``accelerate``: two phases, gradient accumulation, exact resume.

Phase 1 trains the RGB branch alone for ``rgb_steps`` steps; then the part branch becomes a copy of
it and both branches train with BiDiFuse (zero-initialised, so the copy starts out unchanged). One
:class:`SP4DModel` is prepared for the whole run and phase 1 only runs its RGB branch, so the
optimiser, scheduler and checkpoints keep one shape across the switch.

Resume: a checkpoint holds the model (a diffusers folder ``sp4d/``), optimiser, scheduler, RNG states
and :class:`Progress` (step, batches consumed, phase). A restarted run loads the newest one and
continues from the same step and the same data position: the sampler is a seeded permutation per
epoch and the batches of the epoch already consumed are skipped, not replayed; the noise of every
batch is drawn from a generator seeded by (seed, batch index, process). So a run killed and resumed
computes the same steps as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import Sampler

from models.errors import WeightsNotFoundError
from models.image_encoder import OpenCLIPImageEncoder, frame_embeddings, load_image_encoder
from models.losses import DiffusionObjective, training_step
from models.sp4d import SP4DModel
from models.unet import MultiViewUNet
from models.vae import LatentCodec, VAECodec, encode_grid, unscaled
from models.weights import load_rgb_branch
from pipelines.build.dataset import KinematicPartsDataset, data_loader
from pipelines.files import append_line, complete_lines
from pipelines.train.checkpoints import (
    Checkpoint,
    CheckpointRecord,
    DatasetPin,
    RunError,
    RunLock,
    checkpoint_name,
    clear_staging,
    commit_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
    staging_path,
)
from pipelines.train.config import TrainConfig
from pipelines.train.ema import EMAWeights
from pipelines.train.latents import LatentDataset, LatentReader, codec_id, load_codec
from pipelines.version import code_version

MODEL_FOLDER = "sp4d"  # inside a checkpoint: SP4DModel.from_pretrained(<checkpoint>/sp4d)
EMA_FOLDER = "sp4d_ema"  # the EMA weights, loadable the same way
METRICS = "metrics.jsonl"
TRACKER_PROJECT = "train-sp4d"


# ------------------------------------------------------------------------------------- batches


def zero_context(batch_size: int, dim: int, device: torch.device | str) -> torch.Tensor:
    """The cross-attention context when no image encoder is configured: one zero token (the
    unconditional embedding of classifier-free guidance)."""
    return torch.zeros(batch_size, 1, dim, device=device)


def relative_degrees(angles: torch.Tensor) -> torch.Tensor:
    """Dataset camera angles (radians, [B, V] or [B, V, F]) -> degrees relative to view 0, the input view."""
    degrees = torch.rad2deg(angles)
    return degrees - degrees[:, :1]


def model_inputs(
    batch: dict[str, Any], codec: LatentCodec, context_dim: int, image_encoder: OpenCLIPImageEncoder | None = None
) -> dict[str, torch.Tensor]:
    """A dataset batch -> the inputs of :func:`models.losses.training_step`.

    Latents come from the batch when precomputed, else from the codec. View 0 is the input video
    (``cond_latents``); each view's first frame is its reference view (SV4D 2.0's ``cond_view``;
    ``training_step`` masks it at random); both unscaled, as SV4D 2.0 conditions. The image embeddings
    are the encoder's, one per frame of the input video (the images are in every batch, precomputed
    latents or not); without an encoder, one zero token. Cameras go from radians (dataset) to degrees
    relative to the input view (model).
    """
    if "rgb_latents" in batch:
        rgb, parts = batch["rgb_latents"], batch["part_latents"]
    else:
        rgb, parts = encode_grid(codec, batch["rgb"]), encode_grid(codec, batch["parts"])
    cameras = batch["cameras"]
    return {
        "rgb_latents": rgb,
        "part_latents": parts,
        "cond_latents": unscaled(codec, rgb[:, 0]),
        "reference_latents": unscaled(codec, rgb[:, :, 0]),
        "part_reference_latents": unscaled(codec, parts[:, :, 0]),
        "image_embeddings": input_embeddings(image_encoder, batch["rgb"][:, 0])
        if image_encoder is not None
        else zero_context(rgb.shape[0], context_dim, rgb.device),
        "elevation": relative_degrees(cameras["elevation"]),
        "azimuth": relative_degrees(cameras["azimuth"]),
        "part_masks": batch["part_ids"],
    }


@torch.no_grad()
def input_embeddings(encoder: OpenCLIPImageEncoder, video: torch.Tensor) -> torch.Tensor:
    """Per-frame embeddings ``[B, F, D]`` of input videos ``[B, F, 3, H, W]`` in [-1, 1] (frozen encoder)."""
    return frame_embeddings(encoder, video.to(encoder.device)).float()


def conditioning_encoder(config: TrainConfig, context_dim: int) -> OpenCLIPImageEncoder | None:
    """The run's frozen image encoder (``TrainConfig.image_encoder``, else the ``image_encoder/`` that
    :mod:`models.convert` wrote beside ``rgb_init``'s network), or None for the tiny demo (neither set).
    A missing encoder is an error naming the folders looked in, never a silent zero context."""
    if config.image_encoder is not None:
        encoder = load_image_encoder(config.image_encoder)
    elif config.rgb_init is not None:
        root = Path(config.rgb_init).expanduser()
        candidates = [root / "image_encoder", root.parent / "image_encoder"]
        found = next((c for c in candidates if (c / "config.json").is_file()), None)
        if found is None:
            raise WeightsNotFoundError(
                f"rgb_init {root} has no image encoder beside it (looked in {', '.join(map(str, candidates))}). Convert "
                "the whole checkpoint (`python -m models.convert sv4d2.safetensors --out <folder>` writes image_encoder/) "
                "or set image_encoder to an encoder folder."
            )
        encoder = load_image_encoder(found)
    else:
        return None
    if encoder.config.output_dim != context_dim:
        raise RunError(
            "bad_parameters",
            f"the image encoder gives {encoder.config.output_dim}-dim embeddings but the network attends to "
            f"{context_dim}-dim context (its context_dim): use the encoder converted with the network",
        )
    return encoder.eval().requires_grad_(False)


def initial_model(config: TrainConfig, codec: LatentCodec) -> SP4DModel:
    """SP4D from the converted SV4D 2.0 network (``rgb_init``: both branches copies of it, BiDiFuse at
    zero), else randomly initialised branches of :func:`branch_config`."""
    if config.rgb_init is not None:
        return SP4DModel.from_rgb_branch(load_rgb_branch(config.rgb_init))
    return SP4DModel(branch_config=branch_config(config, codec))


def branch_config(config: TrainConfig, codec: LatentCodec) -> dict[str, Any]:
    """The configured branch, or the tiny one sized for the codec's channels."""
    if config.branch_config is not None:
        return dict(config.branch_config)
    channels = codec.latent_channels
    if codec.downscale == 1:
        # Pixel space: attention over every pixel costs (H*W)^2 (at 64 px a step took 13x longer);
        # attend only after two 2x downsamplings, where a latent UNet would be.
        return MultiViewUNet.tiny_config(
            in_channels=2 * channels,
            out_channels=channels,
            reference_channels=channels,
            channel_mult=(1, 1, 1),
            attention_resolutions=(4,),
        )
    return MultiViewUNet.tiny_config(in_channels=2 * channels, out_channels=channels, reference_channels=channels)


def image_dataset(pin: DatasetPin, config: TrainConfig, split: str | None) -> KinematicPartsDataset:
    return KinematicPartsDataset(
        pin.lance_uri,
        n_views=config.n_views,
        n_frames=config.n_frames,
        version=pin.version,
        view_strategy=config.view_strategy,
        frame_strategy=config.frame_strategy,
        split=split,  # type: ignore[arg-type]
        val_fraction=config.val_fraction,
        seed=config.split_seed,
        config_hash=pin.config_hash,
    )


def training_dataset(pin: DatasetPin, config: TrainConfig) -> KinematicPartsDataset | LatentDataset:
    images = image_dataset(pin, config, "train")
    if not config.uses_latent_table:
        return images
    if pin.latents_version is None:
        raise RunError("latents_missing", "precompute_latents is on but the run has no latents version: precompute first")
    return LatentDataset(images, LatentReader(pin.lance_uri, pin.vae_id, pin.latents_version))


class EpochSampler(Sampler[int]):
    """A permutation of the items drawn from (seed, epoch): the same epoch always gives the same order."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed, self.epoch = n_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_items

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items).tolist())


# --------------------------------------------------------------------------------- the model


class DiffusionTrainer(nn.Module):
    """What ``accelerate`` prepares: the SP4D model and its loss, so that both phases run through the
    prepared (possibly DDP-wrapped) module's ``forward``."""

    def __init__(self, model: SP4DModel, objective: DiffusionObjective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor], rgb_only: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
        network = self.model.rgb_branch if rgb_only else self.model
        return training_step(network, batch, self.objective, generator)


def start_part_branch(model: SP4DModel, ema: EMAWeights | None = None) -> None:
    """Phase 2 begins: the part branch becomes a copy of the trained RGB branch (its average too)."""
    model.part_branch.load_state_dict(model.rgb_branch.state_dict())
    if ema is not None:
        ema.reset(model, "part_branch.")


@dataclass
class Progress:
    """Registered with ``accelerate`` so it is saved and restored with every checkpoint."""

    step: int = 0
    micro_batches: int = 0
    part_branch_started: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "micro_batches": self.micro_batches, "part_branch_started": self.part_branch_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.micro_batches = int(state["step"]), int(state["micro_batches"])
        self.part_branch_started = bool(state["part_branch_started"])


def noise_generator(seed: int, micro_batch: int, process: int, device: torch.device) -> torch.Generator:
    """The noise of one batch depends on its index alone, not on how the run got there."""
    mixed = int.from_bytes(np.random.SeedSequence([seed, micro_batch, process]).generate_state(2, np.uint32).tobytes(), "little")
    return torch.Generator(device=device).manual_seed(mixed)


def state_digest(state: Any) -> str:
    """A content hash of a (nested) state dict: tensors by value, in key order."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    feed(state)
    return digest.hexdigest()[:16]


def mixed_precision_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


# ----------------------------------------------------------------------------------- the loop


@dataclass
class TrainHooks:
    """Callbacks a flow plugs in (the loop itself knows nothing of Prefect)."""

    on_log: Callable[[dict[str, float]], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None


class TrainReport(BaseModel):
    run_dir: str
    dataset: DatasetPin
    start_step: int = Field(description="0 for a new run, else the step of the checkpoint it resumed")
    resumed_from: str | None = None
    resumed_optimizer_digest: str | None = Field(None, description="state_digest of the optimiser right after load_state")
    final_step: int
    checkpoints: list[str] = Field(default_factory=list, description="saved by this process, oldest first")
    last_losses: dict[str, float] = Field(default_factory=dict)
    mixed_precision: str
    processes: int = Field(1, description="training processes (GPUs) of the run")
    steps_per_s: float = 0.0
    seconds: float = 0.0
    code_version: str


@dataclass
class _LossMeter:
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: int = 0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.sums[name] += float(value.detach())
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {name: total / self.count for name, total in self.sums.items()}
        self.sums, self.count = defaultdict(float), 0
        return means


def train(
    run_dir: Path, pin: DatasetPin, config: TrainConfig, hooks: TrainHooks | None = None, lock: bool = True
) -> TrainReport:
    """Train (or resume) the run in ``run_dir`` up to ``config.max_steps``; see the module docstring.

    ``lock=False`` in the processes of a multi-process launch: their launcher holds the run's lock
    (:mod:`pipelines.train.launch`), so that no second trainer starts while they run."""
    run_dir = Path(run_dir)
    hooks = hooks or TrainHooks()
    if not lock:
        return _Run(run_dir, pin, config, hooks).run()
    with RunLock(run_dir):
        return _Run(run_dir, pin, config, hooks).run()


class _Run:
    def __init__(self, run_dir: Path, pin: DatasetPin, config: TrainConfig, hooks: TrainHooks):
        self.run_dir, self.pin, self.config, self.hooks = run_dir, pin, config, hooks
        if config.threads:
            torch.set_num_threads(config.threads)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision_mode(config.mixed_precision),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
            # Phase 1 leaves the part branch and BiDiFuse without gradients.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(config.seed)
        self.codec = load_codec(config.vae_path)
        if isinstance(self.codec, VAECodec):
            self.codec.vae.to(self.accelerator.device)
        if codec_id(self.codec) != pin.vae_id:
            raise RunError("codec_mismatch", f"the run's latents come from {pin.vae_id}, {config.vae_path} is {codec_id(self.codec)}")
        self.dataset = training_dataset(pin, config)
        self.sampler = EpochSampler(len(self.dataset), config.seed)
        loader = data_loader(self.dataset, config.batch_size, config.num_workers, sampler=self.sampler)
        sp4d = initial_model(config, self.codec)
        self.branch = dict(sp4d.rgb_branch.config)
        self.image_encoder = conditioning_encoder(config, self.branch["context_dim"])
        if self.image_encoder is not None:  # frozen: not prepared, not checkpointed (the config names it)
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.accelerator.mixed_precision, torch.float32)
            self.image_encoder.to(self.accelerator.device, half)
        checkpointing = config.gradient_checkpointing
        if checkpointing or (checkpointing is None and (config.branch_config or config.rgb_init) is not None):
            sp4d.enable_gradient_checkpointing()
        module = DiffusionTrainer(sp4d, config.objective)
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
        )
        self.progress = Progress()
        self.sharded = self.accelerator.distributed_type == DistributedType.FSDP
        if self.sharded and config.ema_decay is not None:
            raise RunError(
                "bad_parameters",
                "ema_decay with FSDP: each process holds a shard of the weights and an average of shards is not "
                "implemented; set ema_decay to null or launch with infra/accelerate/ddp.yaml",
            )
        self.module, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(module, optimizer, loader, scheduler)
        self.ema = EMAWeights(self.sp4d(), config.ema_decay) if config.ema_decay is not None else None
        self.accelerator.register_for_checkpointing(self.progress)
        self.accelerator.register_save_state_pre_hook(self._save_model)
        self.accelerator.register_load_state_pre_hook(self._load_model)

    # Checkpoints hold the model as a diffusers folder, loadable with SP4DModel.from_pretrained.
    def _save_model(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        if self.sharded:
            # accelerate saves the shards for resuming; the folder for people and from_pretrained needs
            # the whole weights, gathered (a collective: every process is here) onto the main process.
            state = self.accelerator.get_state_dict(models[0])
            if self.accelerator.is_main_process:
                save_whole_model(self.sp4d(), state, Path(output_dir) / MODEL_FOLDER)
            return
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(models[0]).model.save_pretrained(Path(output_dir) / MODEL_FOLDER)
            if self.ema is not None:
                self.ema.save(Path(output_dir) / EMA_FOLDER, Path(output_dir) / MODEL_FOLDER)
        weights.pop()

    def _load_model(self, models: list[nn.Module], input_dir: str) -> None:
        if self.sharded:  # accelerate loaded the shards it saved
            return
        loaded = SP4DModel.from_pretrained(Path(input_dir) / MODEL_FOLDER)
        self.accelerator.unwrap_model(models.pop()).model.load_state_dict(loaded.state_dict())
        if self.ema is not None:
            if not (Path(input_dir) / EMA_FOLDER).is_dir():
                raise RunError("ema_missing", f"{input_dir} has no {EMA_FOLDER}/ but this run keeps an EMA (ema_decay)")
            self.ema.load(Path(input_dir) / EMA_FOLDER)

    def sp4d(self) -> SP4DModel:
        return self.accelerator.unwrap_model(self.module).model

    def run(self) -> TrainReport:
        accelerator, config = self.accelerator, self.config
        resume = latest_checkpoint(self.run_dir)
        digest = None
        if resume is not None:
            accelerator.load_state(str(resume.path))
            digest = state_digest(self.optimizer.state_dict())
        report = TrainReport(
            run_dir=str(self.run_dir),
            dataset=self.pin,
            start_step=self.progress.step,
            resumed_from=str(resume.path) if resume else None,
            resumed_optimizer_digest=digest,
            final_step=self.progress.step,
            mixed_precision=accelerator.mixed_precision,
            processes=accelerator.num_processes,
            code_version=code_version(),
        )
        accelerator.init_trackers(TRACKER_PROJECT, config=_hparams(config, self.pin))
        started = time.monotonic()
        try:
            # A run resumed at its last step trains nothing: its losses are the checkpoint's.
            report.last_losses = self._loop(report) or (resume.record().losses if resume else {})
        finally:
            accelerator.end_training()
        report.seconds = time.monotonic() - started
        report.final_step = self.progress.step
        report.steps_per_s = (report.final_step - report.start_step) / report.seconds if report.seconds else 0.0
        return report

    def _loop(self, report: TrainReport) -> dict[str, float]:
        accelerator, config, progress = self.accelerator, self.config, self.progress
        per_epoch = len(self.loader)
        meter, last = _LossMeter(), {}
        context_dim = self.branch["context_dim"]
        while progress.step < config.max_steps:
            epoch, offset = divmod(progress.micro_batches, per_epoch)
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            self.loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(self.loader, offset) if offset else self.loader
            for batch in batches:
                if progress.step >= config.rgb_steps and not progress.part_branch_started:
                    with self._whole_parameters():
                        start_part_branch(self.sp4d(), self.ema)
                    progress.part_branch_started = True
                generator = noise_generator(config.seed, progress.micro_batches, accelerator.process_index, accelerator.device)
                with accelerator.accumulate(self.module):
                    inputs = model_inputs(batch, self.codec, context_dim, self.image_encoder)
                    losses = self.module(inputs, not progress.part_branch_started, generator)
                    accelerator.backward(losses["loss"])
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(self.module.parameters(), config.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                progress.micro_batches += 1
                meter.add(losses)
                if not accelerator.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.update(self.sp4d())
                progress.step += 1
                last = self._reduce(meter.pop())
                if progress.step % config.log_every == 0 or progress.step == config.max_steps:
                    self._log(last)
                if progress.step % config.checkpoint_every == 0 or progress.step == config.max_steps:
                    report.checkpoints.append(str(self._save(last).path))
                if progress.step >= config.max_steps:
                    break
        return last

    def _whole_parameters(self):
        """Under FSDP, the whole parameters on every process for the phase switch's copy (written back
        to the shards after); otherwise nothing to do."""
        if not self.sharded:
            return contextlib.nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(self.module, writeback=True)

    def _reduce(self, means: dict[str, float]) -> dict[str, float]:
        values = torch.tensor(list(means.values()), device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        row = dict(zip(means, values.tolist()))
        row["lr"] = self.scheduler.get_last_lr()[0]
        row["phase_both"] = float(self.progress.part_branch_started)
        return row

    def _log(self, row: dict[str, float]) -> None:
        step = self.progress.step
        self.accelerator.log(row, step=step)
        if self.accelerator.is_main_process:
            append_line(self.run_dir / METRICS, json.dumps({"step": step, **row}))
            if self.hooks.on_log:
                self.hooks.on_log({"step": step, **row})

    def _save(self, losses: dict[str, float]) -> Checkpoint:
        accelerator, progress = self.accelerator, self.progress
        staged = staging_path(self.run_dir, progress.step)
        if accelerator.is_main_process:
            clear_staging(staged)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staged))
        accelerator.wait_for_everyone()
        checkpoint = Checkpoint(staged.parent / checkpoint_name(progress.step), progress.step)
        if accelerator.is_main_process:
            record = CheckpointRecord(
                step=progress.step,
                micro_batches=progress.micro_batches,
                phase="both" if progress.part_branch_started else "rgb",
                dataset=self.pin,
                config=self.config,
                code_version=code_version(),
                losses={k: v for k, v in losses.items() if math.isfinite(v)},
            )
            commit_checkpoint(staged, record)
            prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
            if self.hooks.on_checkpoint:
                self.hooks.on_checkpoint(checkpoint)
        accelerator.wait_for_everyone()
        return checkpoint


def save_whole_model(model: SP4DModel, trainer_state: dict[str, torch.Tensor], folder: Path) -> None:
    """The whole weights of a :class:`DiffusionTrainer` (``model.`` names) as the diffusers folder
    ``model.save_pretrained`` writes, without materialising a second model."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {k.removeprefix("model."): v.detach().contiguous().cpu() for k, v in trainer_state.items()}
    save_file(state, str(folder / SAFETENSORS_WEIGHTS_NAME))


def _hparams(config: TrainConfig, pin: DatasetPin) -> dict[str, Any]:
    """Scalars only (TensorBoard's hparams plugin takes nothing else)."""
    flat = {k: v for k, v in config.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}
    return {**flat, "dataset_version": pin.version, "config_hash": pin.config_hash, "vae_id": pin.vae_id}


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The logged rows of a run, one per step; a step logged again after a resume keeps its last value."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    for line in complete_lines(path):  # a run killed mid-line leaves a torn last line
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]
