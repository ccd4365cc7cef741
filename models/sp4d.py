"""SP4D: an RGB branch and a part branch of the same UNet, fused by BiDiFuse after every layer.

Both branches take the same conditioning (input-video latents, image embeddings, cameras). The part
branch denoises the latents of colour-encoded part videos; both latents come from one shared, frozen
VAE, which lives outside the model (in :class:`models.pipeline.SP4DPipeline` and in the data
preparation), so a checkpoint of this model holds only the trainable weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from models.aligned_loading import AlignedLoadingMixin
from models.errors import ModelInputError
from models.unet import MultiViewUNet


class BiDiFuse(nn.Module):
    """``h_rgb += F([h_rgb, h_part])``, ``h_part += G([h_rgb, h_part])``.

    F and G are two 1x1 convolutions with a ReLU between; their last convolution starts at zero, so at
    initialisation both branches run exactly as they would alone.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.to_rgb = _fusion_mlp(channels)
        self.to_part = _fusion_mlp(channels)

    def forward(self, h_rgb: torch.Tensor, h_part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([h_rgb, h_part], dim=1)
        return h_rgb + self.to_rgb(both), h_part + self.to_part(both)


def _fusion_mlp(channels: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 1))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


@dataclass
class SP4DOutput(BaseOutput):
    rgb: torch.Tensor  # [B, V, F, C, H, W]
    part: torch.Tensor  # [B, V, F, C, H, W]
    part_features: torch.Tensor | None = None  # [B, V, F, C', h, w] at the requested layer


class SP4DModel(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    """The dual-branch model. ``branch_config`` is a :class:`MultiViewUNet` configuration."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, branch_config: dict):
        super().__init__()
        self.rgb_branch = MultiViewUNet(**branch_config)
        self.part_branch = MultiViewUNet(**branch_config)
        self.layer_names = [name for name, _ in self.rgb_branch.layer_channels]
        self.bidifuse = nn.ModuleList(BiDiFuse(channels) for _, channels in self.rgb_branch.layer_channels)

    @classmethod
    def from_rgb_branch(cls, rgb_branch: MultiViewUNet) -> "SP4DModel":
        """Both branches start as copies of a trained RGB branch; BiDiFuse starts at zero."""
        branch_config = {k: v for k, v in rgb_branch.config.items() if not k.startswith("_")}
        model = cls(branch_config=branch_config)
        state = rgb_branch.state_dict()
        model.rgb_branch.load_state_dict(state)
        model.part_branch.load_state_dict(state)
        return model.to(device=rgb_branch.device, dtype=rgb_branch.dtype)

    def forward(
        self,
        rgb_sample: torch.Tensor,
        part_sample: torch.Tensor,
        timestep: torch.Tensor | float,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        reference_latents: torch.Tensor | None = None,
        feature_layer: str | None = None,
        part_reference_latents: torch.Tensor | None = None,
    ) -> SP4DOutput:
        """Denoiser outputs of both branches (same layout as :meth:`MultiViewUNet.forward`).

        ``feature_layer`` (a name from :attr:`layer_names`) also returns the part branch's fused
        features at that layer, for the contrastive part loss. ``reference_latents`` are the RGB
        reference views (SV4D 2.0's ``cond_view``); the part branch takes ``part_reference_latents``
        (the part videos' reference views) when given, else none (masked).
        """
        if feature_layer is not None and feature_layer not in self.layer_names:
            raise ModelInputError("bad_config", f"unknown feature layer {feature_layer!r}; choose from {self.layer_names}")
        conditioning = (timestep, cond_latents, encoder_hidden_states, elevation, azimuth)
        rgb_stream = self.rgb_branch.iter_layers(rgb_sample, *conditioning, reference_latents)
        part_stream = self.part_branch.iter_layers(part_sample, *conditioning, part_reference_latents)
        features = None
        (_, h_rgb), (_, h_part) = next(rgb_stream), next(part_stream)
        last = len(self.bidifuse) - 1
        for i, (name, fuse) in enumerate(zip(self.layer_names, self.bidifuse)):
            h_rgb, h_part = fuse(h_rgb, h_part)
            if name == feature_layer:
                features = MultiViewUNet.to_grid(h_part, part_sample.shape[:3])
            if i < last:
                (_, h_rgb), (_, h_part) = rgb_stream.send(h_rgb), part_stream.send(h_part)
        return SP4DOutput(rgb=_finish(rgb_stream, h_rgb), part=_finish(part_stream, h_part), part_features=features)


def _finish(stream, hidden: torch.Tensor) -> torch.Tensor:
    """Send the last fused hidden state back and return the branch's output."""
    try:
        stream.send(hidden)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a UNet branch yielded more layers than it declares in layer_channels")
