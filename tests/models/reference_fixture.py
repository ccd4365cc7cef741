"""The SV4D 2.0 reference fixture: its seeded weights and how to read it.

``fixtures/sv4d2_reference.safetensors`` holds the inputs and outputs of Stability AI's own code on a
tiny configuration (written by ``fixtures/make_reference.py``, which explains how). The weights are
not stored: both sides derive them from the reference's tensor names and shapes (stored in the
file's metadata) with :func:`reference_weights`, and a digest in the file checks they came out the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sv4d2_reference.safetensors"
SEED = 1234


def reference_weights(shapes: dict[str, list[int]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded values for every tensor, in sorted key order: norm weights near 1, the rest
    ~N(0, 0.15^2) (layers the reference zero-initialises get values too, so every path counts)."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for key in sorted(shapes):
        values = torch.randn(tuple(shapes[key]), generator=g)
        norm = any(p in key for p in ("norm", "ln_", "in_layers.0", "out_layers.0", "out.0.")) and key.endswith("weight")
        weights[key] = 1.0 + 0.1 * values if norm else 0.15 * values
    return weights


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def load_fixture() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, list[int]]]]:
    """(tensors, {"sv4d2": shapes, "sv4d2_8views": shapes, "clip": shapes})."""
    with safe_open(str(FIXTURE), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = handle.metadata()
    return tensors, {name: json.loads(meta[name]) for name in ("sv4d2", "sv4d2_8views", "clip")}
