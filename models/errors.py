"""Errors the model code raises for bad input, each with a reason code a caller can act on."""

from __future__ import annotations

from schemas.errors import ReasonError


class ModelInputError(ReasonError, ValueError):
    """Bad input to the model, a loss or a loader.

    ``reason`` is one of: ``bad_shape``, ``bad_dtype``, ``bad_config``, ``missing_field``,
    ``weights_not_found``, ``bad_weights``, ``missing_palette``.
    """


class WeightsNotFoundError(ModelInputError, FileNotFoundError):
    def __init__(self, detail: str):
        super().__init__("weights_not_found", detail)
