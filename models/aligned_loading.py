"""Reloaded checkpoints that compute bit for bit like the model that was saved."""

from __future__ import annotations

import itertools

import torch


class AlignedLoadingMixin:
    """``from_pretrained`` that copies every tensor into its own allocation.

    diffusers memory-maps safetensors files, so loaded tensors sit at arbitrary byte offsets; CPU SIMD
    kernels then sum in another order and outputs differ from the saved model's in the last bits. Fresh
    allocations are aligned, so a resumed or evaluated checkpoint reproduces the original exactly.
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                tensor.data = tensor.data.clone()
        return model
