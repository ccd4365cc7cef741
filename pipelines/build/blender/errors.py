"""Typed failures of the Blender stages: each carries the reason code its rejection row will hold."""

from __future__ import annotations

from schemas.errors import ReasonError


class BlenderStageError(ReasonError):
    """A deterministic failure for one asset (never retried): becomes a Rejection with ``reason``."""


class AssetLoadError(BlenderStageError):
    """The file is missing, empty, of a type Blender cannot read, or its import failed."""


class RenderError(BlenderStageError):
    """The scene cannot be turned into a sample (no such clip, no parts, a failed render)."""
