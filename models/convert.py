"""Convert a single-file SV4D 2.0 checkpoint (``sv4d2.safetensors``, ``sv4d2_8views.safetensors``,
Stability AI's ``DiffusionEngine`` layout) into the project's ``save_pretrained`` folders::

    python -m models.convert ~/weights/sv4d2.safetensors --out ~/weights/sv4d2-diffusers
    -> unet/ (MultiViewUNet), vae/ (diffusers AutoencoderKL), image_encoder/ (OpenCLIPImageEncoder),
       conversion.json (the report)

Every source tensor is accounted for in the report: mapped to a target tensor, or ignored with a
reason (the text tower of OpenCLIP, which the image encoder never uses; the two duplicate VAE
encoders of the conditioner; the conditioner VAE's decoder, which the released sampler never runs).
Target tensors without a source are ``missing``, source tensors matched by no rule ``unexpected``;
either refuses the conversion unless ``--allow-partial``.

Name mapping of the network (reference -> here), built from the configuration:
``input_blocks.0.0`` -> ``conv_in``; ``input_blocks.k.0`` / ``.1`` -> ``down_blocks.i.resnets.j`` /
``attentions.j``; the downsampling ``input_blocks.k.0.op`` -> ``down_blocks.i.downsamplers.0.conv``;
``middle_block.{0,1,2}`` -> ``mid_block.{resnets.0, attentions.0, resnets.1}``;
``output_blocks.k.{0,1,2}`` -> ``up_blocks.i.{resnets.j, attentions.j, upsamplers.0}``;
``time_embed`` / ``label_emb.0`` -> ``time_embedding`` / ``camera_embedding``; ``out.{0,2}`` ->
``conv_norm_out`` / ``conv_out``. In residual blocks ``in_layers.{0,2}``, ``emb_layers.1``,
``out_layers.{0,3}``, ``skip_connection`` -> ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``,
``conv2``, ``conv_shortcut``, the spatial block under ``spatial_res_block`` and the temporal one
(``time_mix_blocks``) under ``temporal_res_block``. In attention stacks ``time_mix_blocks`` (view
attention) -> ``view_transformer_blocks``, ``motion_blocks`` (frame attention) ->
``frame_transformer_blocks``, ``time_mix_time_embed`` / ``time_mix_motion_embed`` ->
``view_pos_embed`` / ``frame_pos_embed``, ``time_mixer`` / ``time_mixer_motion`` -> ``view_mixer`` /
``frame_mixer``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from models.errors import ModelInputError, WeightsNotFoundError
from models.image_encoder import OpenCLIPImageEncoder
from models.unet import MultiViewUNet

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
VAE_ENCODER_PREFIX = "conditioner.embedders.1.encoder."
VAE_DECODER_PREFIX = "first_stage_model.decoder."
DUPLICATE_VAE_PREFIXES = ("conditioner.embedders.4.encoder.", "conditioner.embedders.5.encoder.")

# The released first-stage model: SD's KL-f8 VAE; its decoder runs without post_quant_conv
# (the reference's AutoencodingEngine decodes with the decoder alone).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=576,
    scaling_factor=0.18215,
    use_post_quant_conv=False,
)
CONFIGS = {"sv4d2": MultiViewUNet.sv4d2_config, "sv4d2_8views": MultiViewUNet.sv4d2_8views_config}

_RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION_PARTS = {
    "time_mix_blocks.": "view_transformer_blocks.",
    "motion_blocks.": "frame_transformer_blocks.",
    "time_mix_time_embed.0.": "view_pos_embed.linear_1.",
    "time_mix_time_embed.2.": "view_pos_embed.linear_2.",
    "time_mix_motion_embed.0.": "frame_pos_embed.linear_1.",
    "time_mix_motion_embed.2.": "frame_pos_embed.linear_2.",
    "time_mixer_motion.": "frame_mixer.",
    "time_mixer.": "view_mixer.",
}


@dataclass
class ConversionReport:
    """What a conversion did with every tensor. ``mapped``: source -> target key."""

    component: str
    mapped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # source key -> reason
    missing: list[str] = field(default_factory=list)  # target keys no source tensor fills
    unexpected: list[str] = field(default_factory=list)  # source keys no rule maps

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        return (
            f"{self.component}: {len(self.mapped)} mapped, {len(self.ignored)} ignored, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )


# ----------------------------------------------------------------------------- the network


def unet_block_map(config: Mapping) -> dict[str, str]:
    """Reference block prefixes (``input_blocks.4.1.``) -> ours (``down_blocks.1.attentions.0.``)."""
    n_res, mults = config["num_res_blocks"], config["channel_mult"]
    attends, scale = [], 1
    for i in range(len(mults)):
        attends.append(scale in config["attention_resolutions"])
        scale *= 2
    blocks = {"input_blocks.0.0.": "conv_in.", "time_embed.0.": "time_embedding.linear_1.",
              "time_embed.2.": "time_embedding.linear_2.", "label_emb.0.0.": "camera_embedding.linear_1.",
              "label_emb.0.2.": "camera_embedding.linear_2.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
              "middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
              "middle_block.2.": "mid_block.resnets.1."}  # fmt: skip
    k = 1
    for i in range(len(mults)):
        for j in range(n_res):
            blocks[f"input_blocks.{k}.0."] = f"down_blocks.{i}.resnets.{j}."
            if attends[i]:
                blocks[f"input_blocks.{k}.1."] = f"down_blocks.{i}.attentions.{j}."
            k += 1
        if i < len(mults) - 1:
            blocks[f"input_blocks.{k}.0.op."] = f"down_blocks.{i}.downsamplers.0.conv."
            k += 1
    k = 0
    for i in range(len(mults)):
        level = len(mults) - 1 - i
        for j in range(n_res + 1):
            blocks[f"output_blocks.{k}.0."] = f"up_blocks.{i}.resnets.{j}."
            if attends[level]:
                blocks[f"output_blocks.{k}.1."] = f"up_blocks.{i}.attentions.{j}."
            if level > 0 and j == n_res:
                blocks[f"output_blocks.{k}.{2 if attends[level] else 1}.conv."] = f"up_blocks.{i}.upsamplers.0.conv."
            k += 1
    return blocks


def unet_key(reference_key: str, blocks: Mapping[str, str]) -> str | None:
    """One reference network key (without ``model.diffusion_model.``) -> ours; None if no rule fits."""
    match = next((p for p in sorted(blocks, key=len, reverse=True) if reference_key.startswith(p)), None)
    if match is None:
        return None
    target, rest = blocks[match], reference_key[len(match) :]
    if ".resnets." in target:
        if rest.startswith("time_mix_blocks."):
            target, rest = target + "temporal_res_block.", rest[len("time_mix_blocks.") :]
        elif rest.startswith("time_mixer."):
            return target + rest
        else:
            target += "spatial_res_block."
        for old, new in _RESNET_PARTS.items():
            if rest.startswith(old + "."):
                return target + new + rest[len(old) :]
        return None
    if ".attentions." in target:
        for old, new in _ATTENTION_PARTS.items():
            if rest.startswith(old):
                return target + new + rest[len(old) :]
    return target + rest


def convert_unet(state: Mapping[str, torch.Tensor], config: Mapping, target_keys: Iterable[str]) -> tuple[dict, ConversionReport]:
    """The network's tensors of a reference checkpoint, renamed for :class:`MultiViewUNet`."""
    blocks = unet_block_map(config)
    report, out = ConversionReport("unet"), {}
    for key, tensor in state.items():
        if not key.startswith(UNET_PREFIX):
            continue
        name = unet_key(key[len(UNET_PREFIX) :], blocks)
        if name is None:
            report.unexpected.append(key)
        else:
            out[name] = tensor
            report.mapped[key] = name
    targets = set(target_keys)
    report.unexpected += [k for k, v in report.mapped.items() if v not in targets]
    report.missing = sorted(targets - set(out))
    return out, report


# ----------------------------------------------------------------------------- image encoder and VAE


def convert_image_encoder(state: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> tuple[dict, ConversionReport]:
    report, out = ConversionReport("image_encoder"), {}
    visual = CLIP_PREFIX + "visual."
    for key, tensor in state.items():
        if key.startswith(visual):
            out[key[len(visual) :]] = tensor
            report.mapped[key] = key[len(visual) :]
        elif key.startswith(CLIP_PREFIX):
            report.ignored[key] = "OpenCLIP text tower: the image encoder does not use it"
    targets = set(target_keys)
    report.unexpected = [k for k, v in report.mapped.items() if v not in targets]
    report.missing = sorted(targets - set(out))
    return out, report


def convert_vae(state: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> tuple[dict, ConversionReport]:
    """Encoder (+ quant_conv) from the conditioner's first VAE, decoder from ``first_stage_model``."""
    report, ldm = ConversionReport("vae"), {}
    for key, tensor in state.items():
        if key.startswith(VAE_ENCODER_PREFIX + "encoder.") or key.startswith(VAE_ENCODER_PREFIX + "quant_conv."):
            ldm[key[len(VAE_ENCODER_PREFIX) :]] = (key, tensor)
        elif key.startswith(VAE_ENCODER_PREFIX):
            report.ignored[key] = "conditioner VAE decoder/post_quant_conv: the sampler decodes with first_stage_model"
        elif key.startswith(DUPLICATE_VAE_PREFIXES):
            report.ignored[key] = "duplicate of conditioner.embedders.1 (the same VAE for cond_view / cond_motion)"
        elif key.startswith(VAE_DECODER_PREFIX):
            ldm["decoder." + key[len(VAE_DECODER_PREFIX) :]] = (key, tensor)
    converted = convert_ldm_vae_checkpoint({k: t for k, (_, t) in ldm.items()}, VAE_CONFIG)
    # diffusers' mapping is by value, so recover source names by object identity.
    source_of = {id(t): src for src, t in ldm.values()}
    out = {}
    for name, tensor in converted.items():
        out[name] = tensor
        src = source_of.get(id(tensor))
        if src is None:  # reshaped (1x1 conv attention weights -> linear): match by base tensor
            src = source_of.get(id(tensor._base)) if tensor._base is not None else None
        report.mapped[src or f"<reshaped> {name}"] = name
    used = set(report.mapped)
    report.unexpected = sorted(src for src, _ in ldm.values() if src not in used)
    targets = set(target_keys)
    report.unexpected += [k for k, v in report.mapped.items() if v not in targets]
    report.missing = sorted(targets - set(out))
    return out, report


# ----------------------------------------------------------------------------- the whole file


def convert_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    config_name: str | None = None,
    allow_partial: bool = False,
    unet_config: dict | None = None,
    encoder_config: dict | None = None,
) -> list[ConversionReport]:
    """Convert ``checkpoint`` into ``out/{unet,vae,image_encoder}`` and ``out/conversion.json``.

    ``unet_config`` / ``encoder_config`` override the released sizes (tests convert tiny files).
    With ``allow_partial``, tensors the file lacks keep their initial values.
    """
    from safetensors import safe_open

    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    if not checkpoint.is_file():
        raise WeightsNotFoundError(
            f"{checkpoint} does not exist. Download sv4d2.safetensors or sv4d2_8views.safetensors from "
            "huggingface.co/stabilityai/sv4d2.0 on a machine with network access and copy it here."
        )
    config_name = config_name or checkpoint.stem
    if config_name not in CONFIGS:
        raise ModelInputError("bad_config", f"unknown configuration {config_name!r}: pass --config one of {sorted(CONFIGS)}")
    with safe_open(str(checkpoint), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}

    def build(device: str):
        with torch.device(device):
            return (
                MultiViewUNet(**CONFIGS[config_name](**(unet_config or {}))),
                OpenCLIPImageEncoder(**(encoder_config or OpenCLIPImageEncoder.vit_h_14_config())),
                AutoencoderKL(**VAE_CONFIG),
            )

    unet, encoder, vae = build("meta")
    reports = [
        convert_unet(state, unet.config, unet.state_dict())[1],
        convert_image_encoder(state, encoder.state_dict())[1],
        convert_vae(state, vae.state_dict())[1],
    ]
    accounted = set().union(*(set(r.mapped) | set(r.ignored) | set(r.unexpected) for r in reports))
    reports[0].unexpected += sorted(set(state) - accounted)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conversion.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    incomplete = [r.summary() for r in reports if not r.complete]
    if incomplete and not allow_partial:
        raise ModelInputError(
            "bad_weights",
            f"partial conversion refused ({'; '.join(incomplete)}); details in {out / 'conversion.json'}. "
            "Pass --allow-partial to keep initial values for what is missing.",
        )
    # Complete: fill the meta-device models (no memory spent on initial values). Partial: real ones.
    models = build("cpu") if incomplete else (unet, encoder, vae)
    converters = (
        lambda m: convert_unet(state, m.config, m.state_dict())[0],
        lambda m: convert_image_encoder(state, m.state_dict())[0],
        lambda m: convert_vae(state, m.state_dict())[0],
    )
    for name, model, convert in zip(("unet", "image_encoder", "vae"), models, converters):
        target = model.state_dict()
        converted = {k: v for k, v in convert(model).items() if k in target}
        model.load_state_dict(converted, strict=False, assign=not incomplete)
        model.save_pretrained(out / name)
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="sv4d2.safetensors or sv4d2_8views.safetensors")
    parser.add_argument("--out", required=True, help="output folder (unet/, vae/, image_encoder/, conversion.json)")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="network configuration (default: from the file name)")
    parser.add_argument("--allow-partial", action="store_true", help="save even when tensors are missing or unexpected")
    args = parser.parse_args(argv)
    for report in convert_checkpoint(args.checkpoint, args.out, args.config, args.allow_partial):
        print(report.summary())


if __name__ == "__main__":
    main()
