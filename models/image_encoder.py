"""The image encoder of SV4D 2.0: OpenCLIP ViT-H/14's vision tower, one embedding per input frame.

The architecture is open_clip's ``VisionTransformer`` (module names identical, so converted weights
load by name): patch convolution, class token, learned positions, ``ln_pre``, pre-norm residual
blocks (``nn.MultiheadAttention``, GELU MLP), ``ln_post`` on the class token, projection to 1024.
Preprocessing is the reference's (``FrozenOpenCLIPImageEmbedder.preprocess``): images in [-1, 1]
are resized to 224 px with kornia's bicubic resize (align_corners, Gaussian anti-aliasing when
downscaling), mapped to [0, 1] and normalised with CLIP's mean and standard deviation.

Weights come from a converted checkpoint (:mod:`models.convert`) or a local folder; nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from models.aligned_loading import AlignedLoadingMixin
from models.errors import ModelInputError, WeightsNotFoundError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [L, N, D]
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class OpenCLIPImageEncoder(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    """``encoder(images)``: images ``[N, 3, H, W]`` in [-1, 1] -> embeddings ``[N, output_dim]``."""

    @register_to_config
    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1280,
        layers: int = 32,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        output_dim: int = 1024,
    ):
        super().__init__()
        grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)

    @classmethod
    def vit_h_14_config(cls) -> dict:
        return {}

    @classmethod
    def tiny_config(cls, **overrides) -> dict:
        return dict(image_size=28, patch_size=14, width=32, layers=2, heads=4, output_dim=16) | overrides

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the tower's input (resize, [0, 1], CLIP normalisation)."""
        size = self.config.image_size
        images = kornia_resize(images, (size, size))
        images = (images + 1.0) / 2.0
        return (images - self.mean[:, None, None].to(images)) / self.std[:, None, None].to(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelInputError("bad_shape", f"images must be [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        dtype = self.conv1.weight.dtype
        x = self.conv1(self.preprocess(images.to(dtype)))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_post(x)
        return x[:, 0] @ self.proj


def frame_embeddings(encoder: OpenCLIPImageEncoder, video: torch.Tensor) -> torch.Tensor:
    """Per-frame image embeddings of input videos ``[B, F, 3, H, W]`` in [-1, 1] -> ``[B, F, D]``
    (the reference's ``FrozenOpenCLIPImagePredictionEmbedder``)."""
    embeddings = encoder(video.flatten(0, 1))
    return embeddings.reshape(*video.shape[:2], -1)


def load_image_encoder(path: str | Path) -> OpenCLIPImageEncoder:
    """The encoder saved at ``path`` (a converted ``image_encoder/`` folder); a clear error when absent."""
    path = Path(path).expanduser()
    folder = path / "image_encoder" if (path / "image_encoder" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(
            f"no image encoder at {path} (looked for config.json there and in image_encoder/). Convert the released "
            "checkpoint first: `python -m models.convert sv4d2.safetensors --out <folder>`."
        )
    return OpenCLIPImageEncoder.from_pretrained(folder)


def kornia_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """kornia's ``resize(interpolation="bicubic", align_corners=True, antialias=True)``: a separable
    Gaussian blur (reflect border; sigma ``(factor - 1) / 2``, odd kernel ``>= max(4 sigma, 3)``) when
    downscaling, then bicubic interpolation."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        kernels = [int(max(4.0 * s, 3)) for s in sigmas]
        kernels = [k + 1 if k % 2 == 0 else k for k in kernels]
        images = _gaussian_blur(images, kernels, sigmas)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=True)


def _gaussian_blur(images: torch.Tensor, kernels: list[int], sigmas: list[float]) -> torch.Tensor:
    channels = images.shape[1]
    for axis, (size, sigma) in enumerate(zip(kernels, sigmas)):
        x = torch.arange(size, device=images.device, dtype=images.dtype) - size // 2
        weights = torch.exp(-(x**2) / (2.0 * sigma**2))
        weights = weights / weights.sum()
        shape = (channels, 1, size, 1) if axis == 0 else (channels, 1, 1, size)
        pad = (0, 0, size // 2, size // 2) if axis == 0 else (size // 2, size // 2, 0, 0)
        images = F.conv2d(F.pad(images, pad, mode="reflect"), weights.reshape(1, 1, -1).expand(channels, 1, size).reshape(shape), groups=channels)
    return images
