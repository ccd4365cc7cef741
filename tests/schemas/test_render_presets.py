"""Render presets: named sampling recipes that change the pixels, so they key the samples."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.render import PRESETS, RenderSpec


def test_every_preset_gives_its_own_config_hash() -> None:
    hashes = {RenderSpec(preset=name).config_hash() for name in PRESETS}
    assert len(hashes) == len(PRESETS)


def test_presets_cost_and_quality_are_ordered() -> None:
    """draft < dataset < hero in samples: a preset named for more quality never asks for fewer."""
    assert PRESETS["draft"].samples < PRESETS["dataset"].samples < PRESETS["hero"].samples


def test_sampling_is_the_preset_recipe_with_the_spec_sample_count() -> None:
    spec = RenderSpec(preset="hero", samples=7)
    sampling = spec.sampling()
    assert sampling.samples == 7
    assert sampling.model_dump(exclude={"samples"}) == PRESETS["hero"].model_dump(exclude={"samples"})


def test_an_unknown_preset_is_refused_with_the_names() -> None:
    with pytest.raises(ValidationError, match="draft"):
        RenderSpec(preset="best")
