"""The attention stack of one SV4D 2.0 layer: spatial, view and frame attention.

Hidden states travel flat as ``[N, C, H, W]`` with ``N = B * F * V`` in (batch, frame, view) order,
views innermost: the order of Stability AI's SV4D 2.0 code, on which two of its quirks depend (see
below and ``docs/model.md``). One :class:`SpaceTimeTransformer` does, per transformer layer:

1. spatial self-attention over the ``H * W`` tokens of each image, with cross-attention to the CLIP
   embedding of the image's frame (``transformer_blocks``);
2. view attention (the reference's ``time_mix_blocks``): a position embedding made from the frame-0
   time+camera embedding of each view is added, then attention with cross-attention to the CLIP
   embedding of the frame, blended with its input by a learned weight (``view_mixer``);
3. frame attention (the reference's ``motion_blocks``): a frame-index embedding is added, then
   attention across the ``F`` frames of one view at one pixel, cross-attending to the *reference-view
   latent* of that view at that pixel (zeros when no reference views are given), blended by its own
   learned weight (``frame_mixer``).

Blending is ``alpha * x + (1 - alpha) * attended`` with ``alpha = sigmoid(mix_factor)``.

The 3D-attention quirk: with ``use_3d_attention`` (the released ``sv4d2`` configuration), the view
attention's reshape groups the token axis so that each attention sequence is ``V`` *consecutive
pixels of one image*, not the ``V`` views of one pixel (the 8-view configuration reshapes correctly).
The released weights were trained with it, so it is reproduced exactly; ``use_3d_attention=False``
gives true attention across views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from torch import nn
from torch.nn import functional as F

from models.errors import ModelInputError


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N] -> [N, dim]``: cosines then sines of ``positions * exp(-ln(max_period) * k / (dim / 2))``
    (the reference's ``timestep_embedding``; odd ``dim`` pads a zero column)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(positions.device)
    args = positions[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class MLPEmbedding(nn.Module):
    """``Linear -> SiLU -> Linear`` (the reference's ``nn.Sequential(linear, SiLU, linear)``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LearnedMix(nn.Module):
    """``alpha * first + (1 - alpha) * second``, ``alpha = sigmoid(mix_factor)``.

    The reference's ``AlphaBlender("learned_with_images")``; SV4D 2.0 always passes an all-zero
    image-only indicator to it (its code multiplies the indicator by 0), so ``alpha`` is the sigmoid.
    """

    def __init__(self, mix_factor: float):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([float(mix_factor)]))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        return alpha.to(first.dtype) * first + (1.0 - alpha).to(first.dtype) * second


@dataclass
class Conditioning:
    """What every attention stack of one forward pass needs."""

    emb: torch.Tensor  # [N, E] time + camera embedding per image, (b, f, v) order
    context: torch.Tensor  # [B, F, D] CLIP image embedding per frame
    reference: torch.Tensor  # [B * V, Cr, H, W] reference-view latents (zeros when masked)
    batch: int
    frames: int
    views: int


class SpaceTimeTransformer(nn.Module):
    """Spatial, view and frame attention with a residual (the reference's
    ``PostHocSpatialTransformerWithTimeMixingAndMotion`` with ``use_camera_emb``)."""

    def __init__(
        self,
        channels: int,
        head_channels: int,
        context_dim: int,
        reference_channels: int,
        embedding_dim: int,
        depth: int = 1,
        norm_num_groups: int = 32,
        use_3d_attention: bool = True,
        view_mix_factor: float = 0.0,
        frame_mix_factor: float = 0.5,
        max_period: float = 10000.0,
    ):
        super().__init__()
        if channels % head_channels:
            raise ModelInputError("bad_config", f"{channels} channels do not split into heads of {head_channels}")
        heads = channels // head_channels
        self.use_3d_attention = use_3d_attention
        self.max_period = max_period
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, head_channels, cross_attention_dim=context_dim) for _ in range(depth)
        )
        self.view_transformer_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(channels, channels, heads, head_channels, cross_attention_dim=context_dim)
            for _ in range(depth)
        )
        self.frame_transformer_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(channels, channels, heads, head_channels, cross_attention_dim=reference_channels)
            for _ in range(depth)
        )
        # The view position comes from the time + camera embedding (4 x model channels wide).
        self.view_pos_embed = MLPEmbedding(embedding_dim, channels * 4, channels)
        self.frame_pos_embed = MLPEmbedding(channels, channels * 4, channels)
        self.view_mixer = LearnedMix(view_mix_factor)
        self.frame_mixer = LearnedMix(frame_mix_factor)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, t, v = cond.batch, cond.frames, cond.views
        n, c, h, w = hidden_states.shape
        hw = h * w
        d = cond.context.shape[-1]
        residual = hidden_states
        reference = F.interpolate(cond.reference.to(hidden_states.dtype), size=(h, w), mode="bilinear")
        image_context = cond.context[:, :, None].expand(b, t, v, d).reshape(-1, 1, d)  # one row per image
        view_context = cond.context[:, :, None].expand(b, t, hw, d).reshape(-1, 1, d)
        frame_context = reference.permute(0, 2, 3, 1).reshape(-1, 1, reference.shape[1])  # per (b, v, pixel)

        x = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(n, hw, c)
        x = self.proj_in(x)

        frame_index = torch.arange(t, device=x.device).repeat(b)
        frame_pos = self.frame_pos_embed(sinusoidal_embedding(frame_index, c, self.max_period).to(x.dtype))[:, None]
        first_frame = cond.emb.reshape(b, t, v, -1)[:, 0].reshape(b * v, -1)
        view_pos = self.view_pos_embed(first_frame)[:, None]  # [b*v, 1, c]
        if self.use_3d_attention:
            view_pos = view_pos.repeat(1, hw, 1).reshape(-1, 1, c)

        for spatial, view_block, frame_block in zip(
            self.transformer_blocks, self.view_transformer_blocks, self.frame_transformer_blocks
        ):
            x = spatial(x, encoder_hidden_states=image_context)
            x = view_layout(x, b, t, v, self.use_3d_attention)
            x = self.view_mixer(x, view_block(x + view_pos, num_frames=v, encoder_hidden_states=view_context))
            x = frame_layout(x, b, t, v, self.use_3d_attention)
            x = self.frame_mixer(x, frame_block(x + frame_pos, num_frames=t, encoder_hidden_states=frame_context))
            x = x.reshape(n, hw, c)

        x = self.proj_out(x)
        return x.reshape(n, h, w, c).permute(0, 3, 1, 2) + residual


def view_layout(x: torch.Tensor, b: int, t: int, v: int, use_3d_attention: bool) -> torch.Tensor:
    """Image tokens ``[b*t*v, hw, c]`` -> the view attention's input, which its block splits as
    ``(batch, V)`` on the first axis. Correct (``use_3d_attention=False``): ``[b*v, t*hw, c]``, one
    sequence per (frame, pixel) over the views. Released 3D layout: ``[b*v*hw, t, c]``, whose split
    groups ``V`` consecutive rows, i.e. neighbouring pixels of one view (module docstring)."""
    _, hw, c = x.shape
    if use_3d_attention:
        return x.reshape(b, t, v, hw, c).permute(0, 2, 3, 1, 4).reshape(-1, t, c)
    return x.reshape(b, t, v, hw, c).permute(0, 2, 1, 3, 4).reshape(b * v, -1, c)


def frame_layout(x: torch.Tensor, b: int, t: int, v: int, use_3d_attention: bool) -> torch.Tensor:
    """The view attention's output -> the frame attention's input ``[b*t, v*hw, c]`` (one sequence
    per (view, pixel) over the frames, in both layouts)."""
    c = x.shape[-1]
    if use_3d_attention:
        hw = x.shape[0] // (b * v)
        return x.reshape(b, v, hw, t, c).permute(0, 3, 1, 2, 4).reshape(b * t, -1, c)
    hw = x.shape[1] // t
    return x.reshape(b, v, t, hw, c).permute(0, 2, 1, 3, 4).reshape(b * t, -1, c)
