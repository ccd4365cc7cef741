"""Loading real weights from local folders (diffusers layout); nothing is ever downloaded.

- :func:`load_vae`: a diffusers ``AutoencoderKL`` or SVD's ``AutoencoderKLTemporalDecoder``;
- :func:`load_rgb_branch`: the SV4D 2.0 network (:class:`models.unet.MultiViewUNet`) that
  :mod:`models.convert` wrote from the released checkpoint.

A folder is either the component itself (``config.json`` + ``diffusion_pytorch_model*.safetensors``)
or a folder holding it as a subfolder (``vae/``, ``unet/``), e.g. the output of ``models.convert``.
"""

from __future__ import annotations

import json
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
    "Put the weights there first: download sv4d2.safetensors (huggingface.co/stabilityai/sv4d2.0) on a machine with "
    "network access, copy it over and convert it: `python -m models.convert sv4d2.safetensors --out <folder>`"
)



def load_vae(path: str | Path, subfolder: str = "vae") -> AutoencoderKL | AutoencoderKLTemporalDecoder:
    """A diffusers VAE from ``path`` (the VAE folder, or a pipeline folder with ``subfolder``)."""
    folder = component_folder(path, subfolder)
    class_name = json.loads((folder / CONFIG_NAME).read_text()).get("_class_name")
    if class_name not in VAE_CLASSES:
        raise ModelInputError("bad_weights", f"{folder} holds a {class_name!r}, not one of {sorted(VAE_CLASSES)}")
    return VAE_CLASSES[class_name].from_pretrained(folder, local_files_only=True)


def load_rgb_branch(path: str | Path, subfolder: str = "unet") -> MultiViewUNet:
    """The converted SV4D 2.0 network at ``path`` (the ``unet/`` folder or the conversion's output folder)."""
    return MultiViewUNet.from_pretrained(component_folder(path, subfolder))


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
