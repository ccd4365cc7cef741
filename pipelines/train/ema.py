"""Exponential moving average of the model's weights, kept in float32 beside the model.

``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step. Checkpoints hold it
as a diffusers folder (``sp4d_ema/``: the model's ``config.json`` and the averaged tensors), which
``SP4DModel.from_pretrained`` loads like the raw weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "diffusion_pytorch_model.safetensors"


class EMAWeights:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def reset(self, model: nn.Module, prefix: str = "") -> None:
        """Restart the average of the parameters under ``prefix`` from their current values (the
        part branch when it becomes a copy of the RGB branch)."""
        for name, p in model.named_parameters():
            if name.startswith(prefix):
                self.shadow[name].copy_(p.detach().float())

    def save(self, folder: Path, model_folder: Path) -> None:
        """``folder``: ``model_folder``'s config with the averaged weights."""
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_folder / "config.json", folder / "config.json")
        save_file({name: t.contiguous().cpu() for name, t in self.shadow.items()}, str(folder / WEIGHTS))

    def load(self, folder: Path) -> None:
        loaded = load_file(str(folder / WEIGHTS))
        missing = sorted(set(self.shadow) - set(loaded))
        if missing:
            raise KeyError(f"{folder} lacks EMA tensors {missing[:3]}")
        for name, tensor in self.shadow.items():
            tensor.copy_(loaded[name])
