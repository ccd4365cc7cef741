"""The attention stack of one UNet layer: spatial, then view, then frame attention.

Hidden states travel flat as ``[N, C, H, W]`` with ``N = B * V * F`` in (batch, view, frame) order,
frames innermost. Spatial attention runs over the ``H * W`` tokens of each image; view attention
over the ``V`` views of one frame at the same pixel; frame attention over the ``F`` frames of one view
at the same pixel. Each cross-image attention output is blended with its input by a learned weight,
``alpha * input + (1 - alpha) * attended`` with ``alpha = sigmoid(mix_factor)`` (SVD's AlphaBlender).

Submodule names follow diffusers' ``TransformerSpatioTemporalModel`` (``transformer_blocks``,
``temporal_transformer_blocks``, ``time_pos_embed``, ``time_mixer``...) so Stable Video Diffusion
weights load by name; the view attention (``view_transformer_blocks``, ``view_mixer``) is new.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import (
    BasicTransformerBlock,
    TemporalBasicTransformerBlock,
)
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import AlphaBlender
from torch import nn

from models.errors import ModelInputError

Grid = tuple[int, int, int]  # (batch, views, frames)

# SVD's initial mix factor: alpha = sigmoid(0.5) ~ 0.62 keeps most of the input at the start.
INITIAL_MIX_FACTOR = 0.5


class MultiViewTransformer(nn.Module):
    """Spatial self- and cross-attention, view attention and frame attention, with a residual."""

    def __init__(
        self,
        channels: int,
        num_attention_heads: int,
        cross_attention_dim: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        view_attention: bool = True,
        frame_attention: bool = True,
    ):
        super().__init__()
        if channels % num_attention_heads:
            raise ModelInputError("bad_config", f"{channels} channels do not split into {num_attention_heads} heads")
        head_dim = channels // num_attention_heads
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, num_attention_heads, head_dim, cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers)
        )
        self.view_transformer_blocks = None
        if view_attention:
            # No position embedding over views: the camera already enters through the time embedding.
            self.view_transformer_blocks = nn.ModuleList(
                TemporalBasicTransformerBlock(channels, channels, num_attention_heads, head_dim)
                for _ in range(num_layers)
            )
            self.view_mixer = AlphaBlender(alpha=INITIAL_MIX_FACTOR, merge_strategy="learned")
        self.temporal_transformer_blocks = None
        if frame_attention:
            self.temporal_transformer_blocks = nn.ModuleList(
                TemporalBasicTransformerBlock(
                    channels, channels, num_attention_heads, head_dim, cross_attention_dim=cross_attention_dim
                )
                for _ in range(num_layers)
            )
            self.time_proj = Timesteps(channels, True, 0)
            self.time_pos_embed = TimestepEmbedding(channels, channels * 4, out_dim=channels)
            self.time_mixer = AlphaBlender(alpha=INITIAL_MIX_FACTOR, merge_strategy="learned")
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``hidden_states`` [B*V*F, C, H, W]; ``context`` [B, S, D] image embeddings of each sample."""
        batch, views, frames = grid
        n, channels, height, width = hidden_states.shape
        residual = hidden_states
        h = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(n, height * width, channels)
        h = self.proj_in(h)
        image_context = context.repeat_interleave(views * frames, dim=0)
        if self.temporal_transformer_blocks is not None:
            # One context row per (batch, view, pixel): the frame block's attention batch.
            frame_context = context.repeat_interleave(views * height * width, dim=0)
            frame_pos = self.time_pos_embed(self.time_proj(torch.arange(frames, device=h.device)).to(h.dtype))
            frame_pos = frame_pos.repeat(batch * views, 1)[:, None, :]
        for k, block in enumerate(self.transformer_blocks):
            h = block(h, encoder_hidden_states=image_context)
            if self.view_transformer_blocks is not None:
                attended = _frames_to_views(h, grid)
                attended = self.view_transformer_blocks[k](attended, num_frames=views)
                h = self.view_mixer(h, _views_to_frames(attended, grid))
            if self.temporal_transformer_blocks is not None:
                attended = self.temporal_transformer_blocks[k](
                    h + frame_pos, num_frames=frames, encoder_hidden_states=frame_context
                )
                h = self.time_mixer(h, attended)
        h = self.proj_out(h)
        h = h.reshape(n, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return h + residual


def _frames_to_views(h: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(batch, view, frame) order -> (batch, frame, view) order, so views are innermost."""
    batch, views, frames = grid
    return h.reshape(batch, views, frames, *h.shape[1:]).transpose(1, 2).reshape(h.shape)


def _views_to_frames(h: torch.Tensor, grid: Grid) -> torch.Tensor:
    batch, views, frames = grid
    return h.reshape(batch, frames, views, *h.shape[1:]).transpose(1, 2).reshape(h.shape)
