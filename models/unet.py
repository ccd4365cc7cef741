"""The SV4D 2.0 network (Stability AI's ``SpatialUNetModelWithTime`` as configured in
``scripts/sampling/configs/sv4d2*.yaml``), written with diffusers' ModelMixin/ConfigMixin.

Tensor layout at the interface: latents ``[B, V, F, C, H, W]`` (batch, views, frames, channels,
height, width). Inside, images are flat in (batch, frame, view) order, views innermost, as in the
reference: its temporal residual blocks convolve (kernel [3, 1, 1]) along that flattened
frame-view sequence, so neighbouring views of a frame, and the last view of a frame with the first
of the next, are mixed. The released weights depend on it; ``docs/model.md`` lists such quirks.

Inputs of :meth:`MultiViewUNet.forward`:
- ``sample``: preconditioned noisy latents (EDM ``c_in * x``) ``[B, V, F, C, H, W]``;
- ``timestep``: EDM ``c_noise`` (``log(sigma) / 4``), a scalar or ``[B]``;
- ``cond_latents``: latents of the input video ``[B, F, C, H, W]`` (the same for every view) or
  ``[B, V, F, C, H, W]``, concatenated after ``sample`` on channels. The reference feeds them
  *unscaled* (VAE mode, without the 0.18215 factor the noisy latents carry);
- ``encoder_hidden_states``: CLIP image embeddings per input frame ``[B, F, D]`` (``[B, 1, D]`` is
  broadcast to every frame);
- ``elevation``, ``azimuth``: degrees of each generated view *relative to the input view*, ``[B, V]``
  or ``[B, V, F]``. They become the reference's polar angle ``(pi/2 - elevation) mod 2 pi`` and
  azimuth ``azimuth mod 2 pi`` in radians; with ``cond_aug`` (noise-augmentation level of the
  conditioning, 0 at sampling) each gets a sinusoidal embedding, and the concatenation
  (256 + 512 + 512 = 1280 in the released sizes) goes through ``camera_embedding`` (the reference's
  ``label_emb``) and is added to the timestep embedding;
- ``reference_latents``: latents of each generated view at the first frame (SV4D 2.0's
  ``cond_view``), unscaled, ``[B, V, C, H, W]``; ``None`` means masked (all zero), as the reference
  samples a clip without reference views and as training drops them at random.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn
from torch.nn import functional as F

from models.aligned_loading import AlignedLoadingMixin
from models.attention import Conditioning, LearnedMix, MLPEmbedding, SpaceTimeTransformer, sinusoidal_embedding
from models.errors import ModelInputError

# What `iter_layers` yields after each layer: the layer's name and its hidden states [B*F*V, C, h, w].
LayerStream = Generator[tuple[str, torch.Tensor], torch.Tensor, torch.Tensor]
Grid = tuple[int, int, int]  # (batch, views, frames)


@dataclass
class MultiViewUNetOutput(BaseOutput):
    sample: torch.Tensor  # [B, V, F, out_channels, H, W]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (the reference's residual-block normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """``norm -> SiLU -> conv``, plus the projected embedding, ``norm -> SiLU -> conv``, plus a skip.

    ``dims=3`` with ``kernel=(3, 1, 1)`` is the temporal block: input ``[B, C, T, H, W]``, embedding
    ``[B, T, E]``."""

    def __init__(self, channels: int, out_channels: int, emb_dim: int, groups: int, dims: int = 2, kernel=3):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        padding = tuple(k // 2 for k in kernel) if isinstance(kernel, (tuple, list)) else kernel // 2
        self.norm1 = GroupNorm32(groups, channels)
        self.conv1 = conv(channels, out_channels, kernel, padding=padding)
        self.time_emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = GroupNorm32(groups, out_channels)
        self.conv2 = conv(out_channels, out_channels, kernel, padding=padding)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.conv_shortcut = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb_out = self.time_emb_proj(F.silu(emb)).to(h.dtype)
        if h.ndim == 5:  # [B, T, C] -> [B, C, T, 1, 1]
            emb_out = emb_out.permute(0, 2, 1)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        h = self.conv2(F.silu(self.norm2(h + emb_out)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SpatioTemporalResBlock(nn.Module):
    """A per-image residual block, then a temporal one along the flattened (frame, view) sequence,
    blended ``alpha * spatial + (1 - alpha) * temporal`` (the reference's ``PostHocResBlockWithTime``)."""

    def __init__(self, channels: int, out_channels: int, emb_dim: int, groups: int, time_kernel, mix_factor: float):
        super().__init__()
        self.spatial_res_block = ResBlock(channels, out_channels, emb_dim, groups)
        self.temporal_res_block = ResBlock(out_channels, out_channels, emb_dim, groups, dims=3, kernel=time_kernel)
        self.time_mixer = LearnedMix(mix_factor)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x = self.spatial_res_block(x, cond.emb)
        n, c, h, w = x.shape
        sequence = n // cond.batch  # frames x views
        spatial = x.reshape(cond.batch, sequence, c, h, w).permute(0, 2, 1, 3, 4)
        temporal = self.temporal_res_block(spatial, cond.emb.reshape(cond.batch, sequence, -1))
        mixed = self.time_mixer(spatial, temporal)
        return mixed.permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetLevel(nn.Module):
    """One resolution: residual blocks, each followed by its attention stack where the level has one."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsamplers: nn.ModuleList | None = None
        self.upsamplers: nn.ModuleList | None = None


class MultiViewUNet(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    """SV4D 2.0's denoising network over a grid of views x frames (see the module docstring).

    Module names are diffusers-like (``conv_in``, ``down_blocks.i.resnets.j.spatial_res_block``,
    ``...attentions.j.view_transformer_blocks``, ``mid_block``, ``up_blocks``, ``conv_out``);
    :mod:`models.convert` maps the reference checkpoint's names onto them.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        out_channels: int = 4,
        model_channels: int = 320,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        reference_channels: int = 4,
        camera_embed_dims: Sequence[int] = (256, 512, 512),
        use_3d_attention: bool = True,
        time_kernel_size: Sequence[int] = (3, 1, 1),
        norm_num_groups: int = 32,
        time_mix_factor: float = 0.0,
        frame_mix_factor: float = 0.5,
    ):
        super().__init__()
        time_embed_dim = model_channels * 4
        if sum(camera_embed_dims) != time_embed_dim:
            # The reference feeds the time+camera embedding (4 x model_channels wide) to a layer sized
            # for the camera vector (adm_in_channels): the two must be equal.
            raise ModelInputError(
                "bad_config", f"camera_embed_dims {tuple(camera_embed_dims)} must sum to 4 x model_channels = {time_embed_dim}"
            )
        self.time_embedding = MLPEmbedding(model_channels, time_embed_dim, time_embed_dim)
        self.camera_embedding = MLPEmbedding(sum(camera_embed_dims), time_embed_dim, time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        def resnet(cin: int, cout: int) -> SpatioTemporalResBlock:
            return SpatioTemporalResBlock(cin, cout, time_embed_dim, norm_num_groups, tuple(time_kernel_size), time_mix_factor)

        def attention(channels: int) -> SpaceTimeTransformer:
            return SpaceTimeTransformer(
                channels,
                num_head_channels,
                context_dim,
                reference_channels,
                time_embed_dim,
                depth=transformer_depth,
                norm_num_groups=norm_num_groups,
                use_3d_attention=use_3d_attention,
                view_mix_factor=time_mix_factor,
                frame_mix_factor=frame_mix_factor,
            )

        # (name, channels) of every layer output, in execution order: the points BiDiFuse fuses at.
        self.layer_channels: list[tuple[str, int]] = []
        skip_channels = [model_channels]
        channels, scale = model_channels, 1
        attends: list[bool] = []
        self.down_blocks = nn.ModuleList()
        for i, mult in enumerate(channel_mult):
            out = model_channels * mult
            attends.append(scale in attention_resolutions)
            resnets = [resnet(channels if j == 0 else out, out) for j in range(num_res_blocks)]
            level = UNetLevel(resnets, [attention(out) for _ in resnets] if attends[i] else None)
            for j in range(num_res_blocks):
                self.layer_channels.append((f"down.{i}.{j}", out))
                skip_channels.append(out)
            channels = out
            if i < len(channel_mult) - 1:
                level.downsamplers = nn.ModuleList([Downsample(out)])
                skip_channels.append(out)
                scale *= 2
            self.down_blocks.append(level)

        self.mid_block = UNetLevel([resnet(channels, channels), resnet(channels, channels)], [attention(channels)])
        self.layer_channels.append(("mid", channels))

        self.up_blocks = nn.ModuleList()
        for i, mult in enumerate(reversed(channel_mult)):
            level_index = len(channel_mult) - 1 - i
            out = model_channels * mult
            resnets = []
            for j in range(num_res_blocks + 1):
                resnets.append(resnet(channels + skip_channels.pop(), out))
                channels = out
                self.layer_channels.append((f"up.{i}.{j}", out))
            level = UNetLevel(resnets, [attention(out) for _ in resnets] if attends[level_index] else None)
            if level_index > 0:
                level.upsamplers = nn.ModuleList([Upsample(out)])
            self.up_blocks.append(level)

        self.conv_norm_out = GroupNorm32(norm_num_groups, model_channels)
        self.conv_out = nn.Conv2d(model_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ configurations

    @classmethod
    def sv4d2_config(cls, **overrides) -> dict:
        """``sv4d2.safetensors``: 4 views x 12 frames, 3D attention (with the released reshape)."""
        return dict(use_3d_attention=True) | overrides

    @classmethod
    def sv4d2_8views_config(cls, **overrides) -> dict:
        """``sv4d2_8views.safetensors``: 8 views x 5 frames, attention across views."""
        return dict(use_3d_attention=False) | overrides

    @classmethod
    def tiny_config(cls, **overrides) -> dict:
        """The same architecture at test size: two levels of 32 channels, one block each."""
        config = dict(
            model_channels=32,
            channel_mult=(1, 1),
            num_res_blocks=1,
            attention_resolutions=(1, 2),
            num_head_channels=16,
            context_dim=16,
            camera_embed_dims=(32, 48, 48),
        )
        return config | overrides

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        reference_latents: torch.Tensor | None = None,
        cond_aug: float = 0.0,
        return_dict: bool = True,
    ) -> MultiViewUNetOutput | tuple[torch.Tensor]:
        stream = self.iter_layers(
            sample, timestep, cond_latents, encoder_hidden_states, elevation, azimuth, reference_latents, cond_aug
        )
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
        reference_latents: torch.Tensor | None = None,
        cond_aug: float = 0.0,
    ) -> LayerStream:
        """Run the network layer by layer, as a generator.

        After each layer (names in :attr:`layer_channels`) it yields ``(name, hidden)`` and continues
        with the tensor sent back, so a caller can run two branches in lockstep and fuse them
        (:class:`models.sp4d.SP4DModel`). Returns the output ``[B, V, F, out_channels, H, W]``.
        """
        grid = self._check_inputs(sample, cond_latents, encoder_hidden_states, elevation, azimuth, reference_latents)
        batch, views, frames = grid
        if cond_latents.ndim == 5:
            cond_latents = cond_latents[:, None].expand(-1, views, -1, -1, -1, -1)
        h = torch.cat([sample, cond_latents.to(sample.dtype)], dim=3)
        h = self.to_internal(h)
        context = encoder_hidden_states.to(h.dtype)
        if context.shape[1] == 1 and frames > 1:
            context = context.expand(-1, frames, -1)
        channels, height, width = sample.shape[3:]
        if reference_latents is None:
            reference = h.new_zeros(batch * views, self.config.reference_channels, height, width)
        else:
            reference = reference_latents.to(h.dtype).flatten(0, 1)
        cond = Conditioning(
            emb=self._embed(timestep, elevation, azimuth, cond_aug, grid, h.dtype),
            context=context,
            reference=reference,
            batch=batch,
            frames=frames,
            views=views,
        )

        h = self.conv_in(h)
        skips = [h]
        for i, level in enumerate(self.down_blocks):
            for j in range(len(level.resnets)):
                h = self._layer(level, j, h, cond)
                h = yield f"down.{i}.{j}", h
                skips.append(h)
            if level.downsamplers is not None:
                h = level.downsamplers[0](h)
                skips.append(h)

        h = self._checkpointed(self.mid_block.resnets[0], h, cond)
        h = self._checkpointed(self.mid_block.attentions[0], h, cond)
        h = self._checkpointed(self.mid_block.resnets[1], h, cond)
        h = yield "mid", h

        for i, level in enumerate(self.up_blocks):
            for j in range(len(level.resnets)):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self._layer(level, j, h, cond)
                h = yield f"up.{i}.{j}", h
            if level.upsamplers is not None:
                h = level.upsamplers[0](h)

        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return self.to_grid(h.to(sample.dtype), grid)

    # ------------------------------------------------------------------ layout

    @staticmethod
    def to_internal(grid_tensor: torch.Tensor) -> torch.Tensor:
        """``[B, V, F, ...] -> [B*F*V, ...]`` (views innermost, the reference's order)."""
        return grid_tensor.transpose(1, 2).flatten(0, 2)

    @staticmethod
    def to_grid(flat: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``[B*F*V, ...] -> [B, V, F, ...]``."""
        batch, views, frames = grid
        return flat.reshape(batch, frames, views, *flat.shape[1:]).transpose(1, 2)

    def _layer(self, level: UNetLevel, j: int, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        h = self._checkpointed(level.resnets[j], h, cond)
        if level.attentions is not None:
            h = self._checkpointed(level.attentions[j], h, cond)
        return h

    def _checkpointed(self, module: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def camera_vector(self, elevation: torch.Tensor, azimuth: torch.Tensor, cond_aug: float, grid: Grid) -> torch.Tensor:
        """The reference's ``vector`` conditioning, one row per image in (b, f, v) order:
        sinusoidal embeddings of the conditioning-augmentation level, the polar angle and the
        relative azimuth (radians), concatenated."""
        aug_dim, polar_dim, azimuth_dim = self.config.camera_embed_dims
        device = self.conv_in.weight.device
        polar = torch.remainder(torch.pi / 2 - torch.deg2rad(_per_image(elevation, grid)), 2 * torch.pi)
        azim = torch.remainder(torch.deg2rad(_per_image(azimuth, grid)), 2 * torch.pi)
        polar, azim = (self.to_internal(a.to(device)) for a in (polar, azim))
        aug = torch.full_like(polar, float(cond_aug))
        return torch.cat(
            [sinusoidal_embedding(aug, aug_dim), sinusoidal_embedding(polar, polar_dim), sinusoidal_embedding(azim, azimuth_dim)],
            dim=-1,
        )

    def _embed(
        self, timestep: torch.Tensor | float, elevation: torch.Tensor, azimuth: torch.Tensor, cond_aug: float, grid: Grid, dtype
    ) -> torch.Tensor:
        """Timestep embedding plus camera embedding, one row per image: ``[B*F*V, 4 * model_channels]``."""
        batch, views, frames = grid
        device = self.conv_in.weight.device
        t = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1)
        if t.numel() not in (1, batch):
            raise ModelInputError("bad_shape", f"timestep must be a scalar or [B={batch}], got {tuple(t.shape)}")
        t = t.expand(batch).repeat_interleave(views * frames)
        t_emb = self.time_embedding(sinusoidal_embedding(t, self.config.model_channels).to(dtype))
        camera = self.camera_vector(elevation, azimuth, cond_aug, grid).to(dtype)
        return t_emb + self.camera_embedding(camera)

    def _check_inputs(
        self,
        sample: torch.Tensor,
        cond_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        reference_latents: torch.Tensor | None,
    ) -> Grid:
        if sample.ndim != 6:
            raise ModelInputError("bad_shape", f"sample must be [B, V, F, C, H, W], got {tuple(sample.shape)}")
        batch, views, frames, channels, height, width = sample.shape
        levels = len(self.config.channel_mult) - 1
        if height % 2**levels or width % 2**levels:
            raise ModelInputError("bad_shape", f"latent height and width must be multiples of {2**levels}, got {height}x{width}")
        cond_channels = self.config.in_channels - channels
        expected = {(batch, frames, cond_channels, height, width), (batch, views, frames, cond_channels, height, width)}
        if tuple(cond_latents.shape) not in expected:
            raise ModelInputError(
                "bad_shape",
                f"cond_latents must be [B, F, C, H, W] or [B, V, F, C, H, W] = {sorted(expected)}, "
                f"got {tuple(cond_latents.shape)} (in_channels={self.config.in_channels} = sample + cond channels)",
            )
        context = encoder_hidden_states
        if context.ndim != 3 or context.shape[0] != batch or context.shape[1] not in (1, frames):
            raise ModelInputError(
                "bad_shape", f"encoder_hidden_states must be [B={batch}, F={frames} (or 1), D], got {tuple(context.shape)}"
            )
        for name, angles in (("elevation", elevation), ("azimuth", azimuth)):
            if tuple(angles.shape) not in {(batch, views), (batch, views, frames)}:
                raise ModelInputError(
                    "bad_shape", f"{name} must be [B, V] or [B, V, F] = ({batch}, {views}[, {frames}]), got {tuple(angles.shape)}"
                )
        if reference_latents is not None:
            want = (batch, views, self.config.reference_channels, height, width)
            if tuple(reference_latents.shape) != want:
                raise ModelInputError("bad_shape", f"reference_latents must be [B, V, C, H, W] = {want}, got {tuple(reference_latents.shape)}")
        return batch, views, frames


def _per_image(angles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Camera angles [B, V] (fixed per view) or [B, V, F] -> [B, V, F] float32."""
    batch, views, frames = grid
    angles = angles.to(torch.float32)
    if angles.ndim == 2:
        angles = angles[:, :, None].expand(batch, views, frames)
    return angles
