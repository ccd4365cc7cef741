"""Loading real weights from local folders (diffusers layout); nothing is ever downloaded.

- :func:`load_vae`: a diffusers ``AutoencoderKL`` or SVD's ``AutoencoderKLTemporalDecoder``.
- :func:`load_svd_unet` / :func:`load_svd_weights`: a Stable Video Diffusion
  ``UNetSpatioTemporalConditionModel`` into the RGB branch, by name where shapes match, with a
  :class:`LoadReport`. SVD's per-image residual blocks, spatial attention and frame (temporal)
  attention load; view attention is new; the camera ``add_embedding`` has another input width
  (2 angles instead of SVD's 3 added time ids) and stays at initialisation; SVD's temporal residual
  blocks have no counterpart here and are reported unused.

A folder is either the component itself (``config.json`` + ``diffusion_pytorch_model*.safetensors``)
or a pipeline folder holding it as a subfolder (``vae/``, ``unet/``), e.g. a local copy of
``stabilityai/stable-video-diffusion-img2vid-xt``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from safetensors import SafetensorError
from safetensors.torch import load_file

from models.errors import ModelInputError, WeightsNotFoundError
from models.unet import MultiViewUNet

CONFIG_NAME = "config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
INDEX_FILES = tuple(name + ".index.json" for name in WEIGHT_FILES)
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "AutoencoderKLTemporalDecoder": AutoencoderKLTemporalDecoder}
HOW_TO_GET = (
    "Put the weights there first, e.g. `huggingface-cli download stabilityai/stable-video-diffusion-img2vid-xt "
    "--local-dir <folder>` on a machine with network access, then copy the folder over"
)

_SPATIAL_RESNET = re.compile(r"\.resnets\.(\d+)\.spatial_res_block\.")
_TEMPORAL_RESNET = re.compile(r"\.resnets\.\d+\.(temporal_res_block|time_mixer)\.")


@dataclass
class LoadReport:
    """What a partial load did. Keys are the target model's state-dict keys."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # no counterpart in the checkpoint: kept at initialisation
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, source, target
    unused: list[str] = field(default_factory=list)  # checkpoint keys with no counterpart here

    def summary(self) -> str:
        mismatched = ", ".join(f"{k} {list(src)} -> {list(dst)}" for k, src, dst in self.shape_mismatched)
        return (
            f"loaded {len(self.loaded)} tensors; {len(self.new)} new (initialised); "
            f"{len(self.shape_mismatched)} shape-mismatched (initialised){': ' + mismatched if mismatched else ''}; "
            f"{len(self.unused)} checkpoint tensors unused"
        )


def load_vae(path: str | Path, subfolder: str = "vae") -> AutoencoderKL | AutoencoderKLTemporalDecoder:
    """A diffusers VAE from ``path`` (the VAE folder, or a pipeline folder with ``subfolder``)."""
    folder = component_folder(path, subfolder)
    class_name = json.loads((folder / CONFIG_NAME).read_text()).get("_class_name")
    if class_name not in VAE_CLASSES:
        raise ModelInputError("bad_weights", f"{folder} holds a {class_name!r}, not one of {sorted(VAE_CLASSES)}")
    return VAE_CLASSES[class_name].from_pretrained(folder, local_files_only=True)


def svd_branch_config(svd_config: dict, **overrides) -> dict:
    """The :class:`MultiViewUNet` configuration whose shapes match an SVD UNet configuration."""
    for name in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
        if isinstance(svd_config.get(name), (list, tuple)):
            raise ModelInputError("bad_weights", f"per-level {name} is not supported: {svd_config[name]}")
    heads = svd_config["num_attention_heads"]
    if not isinstance(heads, (list, tuple)):
        heads = (heads,) * len(svd_config["block_out_channels"])
    config = MultiViewUNet.sv4d_config(
        in_channels=svd_config["in_channels"],
        out_channels=svd_config["out_channels"],
        block_out_channels=tuple(svd_config["block_out_channels"]),
        layers_per_block=svd_config["layers_per_block"],
        attention_levels=tuple(t.startswith("CrossAttn") for t in svd_config["down_block_types"]),
        num_attention_heads=tuple(heads),
        transformer_layers_per_block=svd_config.get("transformer_layers_per_block", 1),
        cross_attention_dim=svd_config["cross_attention_dim"],
        addition_time_embed_dim=svd_config["addition_time_embed_dim"],
    )
    return config | overrides


def load_svd_unet(path: str | Path, subfolder: str = "unet", **overrides) -> tuple[MultiViewUNet, LoadReport]:
    """A new RGB branch shaped like the SVD UNet at ``path``, with its weights loaded where they fit."""
    folder = component_folder(path, subfolder)
    svd_config = json.loads((folder / CONFIG_NAME).read_text())
    unet = MultiViewUNet(**svd_branch_config(svd_config, **overrides))
    return unet, load_svd_weights(unet, folder)


def load_svd_weights(unet: MultiViewUNet, path: str | Path, subfolder: str = "unet") -> LoadReport:
    """Copy SVD UNet weights into ``unet`` by name where shapes match; the rest keep their values."""
    source = read_state_dict(component_folder(path, subfolder))
    target = unet.state_dict()
    report = LoadReport()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        name = _svd_to_branch_key(key)
        if name is None or name not in target:
            report.unused.append(key)
        elif tensor.shape != target[name].shape:
            report.shape_mismatched.append((name, tuple(tensor.shape), tuple(target[name].shape)))
        else:
            mapped[name] = tensor.to(target[name].dtype)
    report.loaded = sorted(mapped)
    mismatched = {k for k, _, _ in report.shape_mismatched}
    report.new = sorted(k for k in target if k not in mapped and k not in mismatched)
    unet.load_state_dict(mapped, strict=False)
    return report


def _svd_to_branch_key(key: str) -> str | None:
    """SVD state-dict key -> this UNet's key; None for SVD's temporal residual blocks."""
    if _TEMPORAL_RESNET.search(key):
        return None
    return _SPATIAL_RESNET.sub(r".resnets.\1.", key)


def component_folder(path: str | Path, subfolder: str) -> Path:
    """``path`` itself when it holds a config.json, else ``path/subfolder``; a clear error otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{path} does not exist. {HOW_TO_GET}, and pass that folder (or its {subfolder}/).")
    for folder in (path, path / subfolder):
        if (folder / CONFIG_NAME).is_file():
            return folder
    found = sorted(p.name for p in path.iterdir())[:12]
    raise WeightsNotFoundError(
        f"no {CONFIG_NAME} in {path} or {path / subfolder} (found {found}). Pass a diffusers component folder "
        f"({CONFIG_NAME} + {WEIGHT_FILES[0]}) or a pipeline folder with a {subfolder}/ subfolder."
    )


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers component folder: one safetensors file or a sharded index."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return _load_safetensors(folder / name)
    for name in INDEX_FILES:
        if (folder / name).is_file():
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise WeightsNotFoundError(f"{folder / name} lists {shard}, which is missing. {HOW_TO_GET}.")
                state.update(_load_safetensors(folder / shard))
            return state
    raise WeightsNotFoundError(f"no safetensors weights in {folder} (looked for {WEIGHT_FILES + INDEX_FILES}). {HOW_TO_GET}.")


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError) as error:
        raise ModelInputError("bad_weights", f"cannot read {file}: {error}") from error
