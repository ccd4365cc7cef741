"""The multi-view video UNet (SV4D family), built from diffusers blocks.

Tensor layout: latents are ``[B, V, F, C, H, W]`` (batch, views, frames, channels, height, width).
Inside, every image is processed flat as ``[B * V * F, C, H, W]``; only the view and frame attention
of :class:`models.attention.MultiViewTransformer` mix information between images.

Inputs:
- ``sample``: the (preconditioned) noisy latents ``[B, V, F, C, H, W]``;
- ``cond_latents``: latents of the conditioning video, ``[B, F, C, H, W]`` (shared by all views) or
  ``[B, V, F, C, H, W]``; concatenated after ``sample`` on channels (SVD's order), so 4-channel latents
  give ``in_channels = 8``;
- ``timestep``: the noise level embedding input (EDM ``c_noise``), a scalar or ``[B]``;
- ``encoder_hidden_states``: image embeddings ``[B, S, D]`` for cross-attention (CLIP: ``S = 1``);
- ``elevation``, ``azimuth``: camera angles in degrees (as :class:`schemas.render.Camera`; the dataset
  gives radians), ``[B, V]`` (fixed per view) or ``[B, V, F]``;
  their sinusoidal embeddings, through ``add_embedding``, are added to the timestep embedding.

Module names follow diffusers' ``UNetSpatioTemporalConditionModel`` (``conv_in``, ``down_blocks.i.resnets.j``,
``...attentions.j``, ``downsamplers.0``, ``mid_block``, ``up_blocks``, ``conv_out``) so that
:mod:`models.weights` can load Stable Video Diffusion weights by name.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from diffusers.utils import BaseOutput
from torch import nn

from models.aligned_loading import AlignedLoadingMixin
from models.attention import Grid, MultiViewTransformer
from models.errors import ModelInputError

CAMERA_ANGLES = 2  # elevation, azimuth

# What `iter_layers` yields after each layer: the layer's name and its hidden states [B*V*F, C, h, w].
LayerStream = Generator[tuple[str, torch.Tensor], torch.Tensor, torch.Tensor]


@dataclass
class MultiViewUNetOutput(BaseOutput):
    sample: torch.Tensor  # [B, V, F, out_channels, H, W]


class UNetLevel(nn.Module):
    """One resolution of the UNet: residual blocks, each followed by its attention stack."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsamplers: nn.ModuleList | None = None
        self.upsamplers: nn.ModuleList | None = None


class MultiViewUNet(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    """A latent video diffusion UNet over a grid of views x frames.

    At every layer: a residual block (``ResnetBlock2D``), then spatial self-attention over H x W with
    cross-attention to the image embeddings, then view attention, then frame attention (where the
    level has attention, as in SVD: not at the lowest down level).
    ``view_attention`` / ``frame_attention`` switch the cross-image attentions off (ablations, tests).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        out_channels: int = 4,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_levels: Sequence[bool] = (True, True, True, False),
        num_attention_heads: Sequence[int] = (5, 10, 20, 20),
        transformer_layers_per_block: int = 1,
        cross_attention_dim: int = 1024,
        addition_time_embed_dim: int = 256,
        norm_num_groups: int = 32,
        view_attention: bool = True,
        frame_attention: bool = True,
    ):
        super().__init__()
        n_levels = len(block_out_channels)
        if not len(attention_levels) == len(num_attention_heads) == n_levels:
            raise ModelInputError(
                "bad_config", "block_out_channels, attention_levels and num_attention_heads need one entry per level"
            )
        time_embed_dim = block_out_channels[0] * 4

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(CAMERA_ANGLES * addition_time_embed_dim, time_embed_dim)

        def resnet(cin: int, cout: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin, out_channels=cout, temb_channels=time_embed_dim, groups=norm_num_groups, eps=1e-5
            )

        def attention(channels: int, heads: int) -> MultiViewTransformer:
            return MultiViewTransformer(
                channels,
                heads,
                cross_attention_dim,
                num_layers=transformer_layers_per_block,
                norm_num_groups=norm_num_groups,
                view_attention=view_attention,
                frame_attention=frame_attention,
            )

        # (name, channels) of every layer output, in execution order: the points BiDiFuse fuses at.
        self.layer_channels: list[tuple[str, int]] = []
        skip_channels = [block_out_channels[0]]
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, out in enumerate(block_out_channels):
            resnets = [resnet(channels if j == 0 else out, out) for j in range(layers_per_block)]
            attentions = [attention(out, num_attention_heads[i]) for _ in resnets] if attention_levels[i] else None
            level = UNetLevel(resnets, attentions)
            for j in range(layers_per_block):
                self.layer_channels.append((f"down.{i}.{j}", out))
                skip_channels.append(out)
            if i < n_levels - 1:
                level.downsamplers = nn.ModuleList(
                    [Downsample2D(out, use_conv=True, out_channels=out, padding=1, name="op")]
                )
                skip_channels.append(out)
            self.down_blocks.append(level)
            channels = out

        self.mid_block = UNetLevel(
            [resnet(channels, channels), resnet(channels, channels)], [attention(channels, num_attention_heads[-1])]
        )
        self.layer_channels.append(("mid", channels))

        self.up_blocks = nn.ModuleList()
        for i, out in enumerate(reversed(block_out_channels)):
            level_index = n_levels - 1 - i
            resnets = []
            for j in range(layers_per_block + 1):
                resnets.append(resnet(channels + skip_channels.pop(), out))
                channels = out
                self.layer_channels.append((f"up.{i}.{j}", out))
            attentions = (
                [attention(out, num_attention_heads[level_index]) for _ in resnets]
                if attention_levels[level_index]
                else None
            )
            level = UNetLevel(resnets, attentions)
            if i < n_levels - 1:
                level.upsamplers = nn.ModuleList([Upsample2D(out, use_conv=True, out_channels=out)])
            self.up_blocks.append(level)

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    @classmethod
    def sv4d_config(cls, **overrides) -> dict:
        """SVD/SV4D sizes: 4 levels (320, 640, 1280, 1280), 64-channel heads, CLIP ViT-H context (1024)."""
        config = dict(
            in_channels=8,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_levels=(True, True, True, False),
            num_attention_heads=(5, 10, 20, 20),
            transformer_layers_per_block=1,
            cross_attention_dim=1024,
            addition_time_embed_dim=256,
            norm_num_groups=32,
        )
        return config | overrides

    @classmethod
    def tiny_config(cls, **overrides) -> dict:
        """The same architecture at test size: two levels of 16 and 32 channels."""
        config = dict(
            in_channels=8,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            attention_levels=(True, True),
            num_attention_heads=(2, 4),
            transformer_layers_per_block=1,
            cross_attention_dim=16,
            addition_time_embed_dim=8,
            norm_num_groups=8,
        )
        return config | overrides

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        return_dict: bool = True,
    ) -> MultiViewUNetOutput | tuple[torch.Tensor]:
        stream = self.iter_layers(sample, timestep, cond_latents, encoder_hidden_states, elevation, azimuth)
        _, hidden = next(stream)
        while True:
            try:
                _, hidden = stream.send(hidden)
            except StopIteration as done:
                out = done.value
                break
        return MultiViewUNetOutput(sample=out) if return_dict else (out,)

    def iter_layers(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
    ) -> LayerStream:
        """Run the UNet layer by layer, as a generator.

        After each layer (names in :attr:`layer_channels`) it yields ``(name, hidden)`` and continues
        with the tensor sent back, so a caller can run two branches in lockstep and fuse them
        (:class:`models.sp4d.SP4DModel`). Returns the output ``[B, V, F, out_channels, H, W]``.
        """
        grid = self._check_inputs(sample, cond_latents, encoder_hidden_states, elevation, azimuth)
        batch, views, frames = grid
        if cond_latents.ndim == 5:
            cond_latents = cond_latents[:, None].expand(-1, views, -1, -1, -1, -1)
        h = torch.cat([sample, cond_latents.to(sample.dtype)], dim=3).flatten(0, 2)
        emb = self._embed(timestep, elevation, azimuth, grid, h.dtype)
        context = encoder_hidden_states.to(h.dtype)

        h = self.conv_in(h)
        skips = [h]
        for i, level in enumerate(self.down_blocks):
            for j in range(len(level.resnets)):
                h = self._layer(level, j, h, emb, context, grid)
                h = yield f"down.{i}.{j}", h
                skips.append(h)
            if level.downsamplers is not None:
                h = level.downsamplers[0](h)
                skips.append(h)

        h = self._checkpointed(self.mid_block.resnets[0], h, emb)
        h = self._checkpointed(self.mid_block.attentions[0], h, context, grid)
        h = self._checkpointed(self.mid_block.resnets[1], h, emb)
        h = yield "mid", h

        for i, level in enumerate(self.up_blocks):
            for j in range(len(level.resnets)):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self._layer(level, j, h, emb, context, grid)
                h = yield f"up.{i}.{j}", h
            if level.upsamplers is not None:
                h = level.upsamplers[0](h, output_size=skips[-1].shape[-2:])

        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return h.reshape(batch, views, frames, *h.shape[1:])

    def _layer(
        self, level: UNetLevel, j: int, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, grid: Grid
    ) -> torch.Tensor:
        h = self._checkpointed(level.resnets[j], h, emb)
        if level.attentions is not None:
            h = self._checkpointed(level.attentions[j], h, context, grid)
        return h

    def _checkpointed(self, module: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def _embed(
        self, timestep: torch.Tensor | float, elevation: torch.Tensor, azimuth: torch.Tensor, grid: Grid, dtype
    ) -> torch.Tensor:
        """Timestep embedding plus camera embedding, one row per image: [B*V*F, time_embed_dim]."""
        batch, views, frames = grid
        device = self.conv_in.weight.device
        t = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1).expand(batch)
        t_emb = self.time_embedding(self.time_proj(t).to(dtype))  # [B, D]
        azimuth = torch.remainder(_per_image(azimuth, grid), 360.0)  # -90 is 270
        # Degrees, not radians: the sinusoids' periods (2 pi to 10000 units) then resolve a few
        # degrees, where radians would leave all but the fastest few nearly constant across views.
        cameras = torch.stack([_per_image(elevation, grid), azimuth], dim=-1)  # [B, V, F, 2]
        cam = self.add_time_proj(cameras.reshape(-1).to(device)).reshape(batch * views * frames, -1)
        cam_emb = self.add_embedding(cam.to(dtype))
        return t_emb.repeat_interleave(views * frames, dim=0) + cam_emb

    def _check_inputs(
        self,
        sample: torch.Tensor,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
    ) -> Grid:
        if sample.ndim != 6:
            raise ModelInputError("bad_shape", f"sample must be [B, V, F, C, H, W], got {tuple(sample.shape)}")
        batch, views, frames, channels, height, width = sample.shape
        cond_channels = self.config.in_channels - channels
        expected = {(batch, frames, cond_channels, height, width), (batch, views, frames, cond_channels, height, width)}
        if tuple(cond_latents.shape) not in expected:
            raise ModelInputError(
                "bad_shape",
                f"cond_latents must be [B, F, C, H, W] or [B, V, F, C, H, W] = {sorted(expected)}, "
                f"got {tuple(cond_latents.shape)} (in_channels={self.config.in_channels} = sample + cond channels)",
            )
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ModelInputError(
                "bad_shape", f"encoder_hidden_states must be [B={batch}, S, D], got {tuple(encoder_hidden_states.shape)}"
            )
        for name, angles in (("elevation", elevation), ("azimuth", azimuth)):
            if tuple(angles.shape) not in {(batch, views), (batch, views, frames)}:
                raise ModelInputError(
                    "bad_shape", f"{name} must be [B, V] or [B, V, F] = ({batch}, {views}[, {frames}]), got {tuple(angles.shape)}"
                )
        return batch, views, frames


def _per_image(angles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Camera angles [B, V] (fixed per view) or [B, V, F] -> [B, V, F] float32."""
    batch, views, frames = grid
    angles = angles.to(torch.float32)
    if angles.ndim == 2:
        angles = angles[:, :, None].expand(batch, views, frames)
    return angles
