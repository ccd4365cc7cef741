"""What one training run of SP4D is: model, data, schedule and objective, validated once.

The same :class:`TrainConfig` is written beside every checkpoint; a run that is restarted must be
given the same configuration (only the step budget may grow), so a resumed run continues exactly
the run it resumes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.losses import DiffusionObjective
from pipelines.build.dataset import Strategy

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
LrSchedule = Literal["constant", "constant_with_warmup", "cosine", "linear"]

# Fields that may differ between the run that wrote a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "threads", "preview_inference_steps"}
)


class TrainConfig(BaseModel):
    """One training run. Steps are optimiser steps; one step consumes ``gradient_accumulation_steps``
    batches of ``batch_size`` items on each process."""

    model_config = ConfigDict(extra="forbid")

    # model
    branch_config: dict[str, Any] | None = Field(
        None,
        description="MultiViewUNet configuration of each branch; None: the tiny configuration sized for the codec "
        "(pipelines.train.loop.branch_config)",
    )
    rgb_init: str | None = Field(
        None,
        description="a converted SV4D 2.0 folder (python -m models.convert ... --out <folder>, or its unet/): both branches "
        "start from its network and branch_config is taken from it; None: random initialisation",
    )
    image_encoder: str | None = Field(
        None,
        description="the frozen OpenCLIP image encoder: a converted folder (its image_encoder/) or an encoder folder; "
        "None: the image_encoder/ beside rgb_init's network, and without rgb_init none at all (the tiny demo: the "
        "context is one zero token)",
    )
    vae_path: str | None = Field(
        None, description="a local diffusers VAE folder (or pipeline folder with vae/); None: pixel space (identity codec)"
    )
    precompute_latents: bool = Field(True, description="encode the dataset once into the `latents` table (needs vae_path)")
    # data
    n_views: int = Field(2, ge=1, le=64)
    n_frames: int = Field(2, ge=1, le=64)
    view_strategy: Strategy = "even"
    frame_strategy: Strategy = "even"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="assets held out for evaluation (split by asset)")
    split_seed: int = Field(0, ge=0, description="seed of the asset split (pipelines.build.dataset.split_of)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    # schedule
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(200, ge=1)
    rgb_steps: int = Field(
        100,
        ge=0,
        description="phase 1: the RGB branch alone for this many steps; then the part branch starts as its copy and "
        "both train (rgb_steps >= max_steps trains the RGB branch only)",
    )
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: LrSchedule = "constant_with_warmup"
    warmup_steps: int = Field(10, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(
        0.9999, ge=0, lt=1, description="EMA of the weights, saved beside each checkpoint as sp4d_ema/; None: no EMA"
    )
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass; None: on for a configured (real-size) branch"
    )
    multi_gpu: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="with more than one GPU the flow runs `accelerate launch` with infra/accelerate/<this>.yaml: ddp "
        "(whole model per GPU) or fsdp (weights, gradients and optimiser state sharded; no EMA)",
    )
    mixed_precision: MixedPrecision = Field("auto", description="auto: bf16 on GPUs that have it, fp16 on other GPUs, none on CPU")
    seed: int = Field(0, ge=0)
    # bookkeeping
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int | None = Field(3, ge=1, description="keep the newest N checkpoints; None keeps all")
    log_every: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's default")
    preview_inference_steps: int = Field(8, ge=1, description="sampler steps of the preview grid at the end of a run")
    objective: DiffusionObjective = Field(default_factory=DiffusionObjective)

    @property
    def uses_latent_table(self) -> bool:
        """Pixel space has nothing to precompute: its "latents" are the images."""
        return self.precompute_latents and self.vae_path is not None

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def differences(self, other: "TrainConfig") -> list[str]:
        """Field names whose values differ and may not change when a run resumes."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return sorted(k for k in mine if mine[k] != theirs[k] and k not in RESUMABLE_CHANGES)
