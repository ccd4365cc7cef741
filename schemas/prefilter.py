"""Prefilter rules: what may go on to be fetched, decided on annotations alone."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field, field_validator

# Formats whose files can hold an armature with skinned meshes and Blender imports natively.
RIG_FILE_TYPES: frozenset[str] = frozenset({"glb", "gltf", "fbx", "blend"})

# Formats that hold rigs but that this Blender cannot read: refused at the prefilter with their own
# reason (``no_blender_importer``), before anything is fetched.
NO_BLENDER_IMPORTER: dict[str, str] = {"dae": "Blender 5.0 removed its Collada (.dae) importer"}

# Licences that allow training and redistribution of renders without share-alike or
# non-commercial terms. Share-alike, NC, ND and copyleft licences are opt-in.
PERMISSIVE_LICENCES: frozenset[str] = frozenset(
    {
        "CC0-1.0",
        "CC-BY-2.0",
        "CC-BY-2.5",
        "CC-BY-3.0",
        "CC-BY-4.0",
        "MIT",
        "MIT-0",
        "Apache-2.0",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "0BSD",
        "ISC",
        "Zlib",
        "Unlicense",
        "BSL-1.0",
    }
)


class PrefilterRules(BaseModel):
    """Which candidates are worth fetching.

    ``sources`` None means every source. ``allow_unlicensed_local`` lets files of the ``local``
    source without a licence string through (they are the user's own files); a local file that
    *does* name a licence is still checked against ``licences``. Procedural assets are CC0-1.0.
    """

    file_types: list[str] = Field(default_factory=lambda: sorted(RIG_FILE_TYPES))
    sources: list[str] | None = None
    licences: list[str] = Field(default_factory=lambda: sorted(PERMISSIVE_LICENCES), description="SPDX ids allowed")
    allow_unlicensed_local: bool = True
    dedupe: bool = Field(True, description="keep one asset per sha256")

    @field_validator("file_types")
    @classmethod
    def _file_types(cls, value: list[str]) -> list[str]:
        types = sorted({t.lower().lstrip(".") for t in value})
        unreadable = [f"{t}: {NO_BLENDER_IMPORTER[t]}" for t in types if t in NO_BLENDER_IMPORTER]
        if unreadable:
            raise ValueError(f"cannot be rendered: {'; '.join(unreadable)}")
        return types

    @field_validator("sources", "licences")
    @classmethod
    def _sorted(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))

    def config_hash(self) -> str:
        """A short, stable hash of every field (canonical JSON), recorded with rejections."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
