"""The asset folder: written whole, read back to the same renders, replacing only a previous fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from pipelines.evaluate.decoding import decode_with_palette
from pipelines.fit4d.asset import AssetFolderError, load_asset, render_grid, write_asset
from pipelines.fit4d.fit import fit
from pipelines.fit4d.target import FitTarget
from schemas.fit4d import TENSOR_DOC, FitConfig, FitRecord


def test_an_asset_reads_back_to_the_same_renders_and_replaces_only_a_fit(moving_arm: FitTarget, tmp_path: Path) -> None:
    config = FitConfig(steps=4, n_gaussians=64, train_frames=[0, 2])
    result = fit(moving_arm, config)
    out = tmp_path / "asset"
    record = write_asset(out, result, moving_arm, config)
    assert set(load_file(str(out / "gaussians.safetensors"))) == set(TENSOR_DOC)
    model, loaded = load_asset(out)
    assert loaded == FitRecord.model_validate_json((out / "asset.json").read_text()) and loaded.knot_times == [0.0, 2.0]
    assert loaded.time_range == (0.0, 2.0) and loaded.reference_frame_time == 0.0
    # Between the knots (the held-out frame 1) too: the motion is interpolated from what was saved.
    times = [0.0, 1.0, 2.0]
    first = render_grid(result.model, moving_arm.cameras[:2], times, moving_arm.palette)
    second = render_grid(model, record.cameras[:2], times, np.asarray(record.part_map.palette, np.uint8))
    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.parts, second.parts)
    # Part maps are drawn in exact palette colours: decoding with the palette gives every pixel a part or background.
    ids = decode_with_palette(first.parts, moving_arm.palette, limit=0.5)
    assert ids.max() < moving_arm.part_map.n_parts and set(np.unique(ids)) - {-1}
    assert np.array_equal(ids >= 0, first.alpha >= 0.5)

    write_asset(out, fit(moving_arm, config.model_copy(update={"steps": 2})), moving_arm, config)
    assert FitRecord.model_validate_json((out / "asset.json").read_text()).n_gaussians == 64
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(AssetFolderError, match="not a previous fitted asset"):
        write_asset(other, result, moving_arm, config)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".*partial"))  # no staging folder left behind
    with pytest.raises(AssetFolderError, match="not a fitted asset"):
        load_asset(other)
