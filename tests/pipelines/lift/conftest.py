"""Procedural rigs rendered once per session (real bpy, 64 px, 8 views x 4 frames) with their true rigs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from pipelines.build.blender.truth import TrueRig
from pipelines.lift.views import PartViews
from schemas.render import RenderSpec

# frames spread until consecutive ones differ by 5% of the object's size: enough motion to fit
SPEC = RenderSpec(n_views=8, n_frames=4, resolution=64, samples=1, denoise=False, motion_threshold=0.05)


def render_with_truth(asset: Path) -> tuple[PartViews, TrueRig]:
    from pipelines.build.blender import clips
    from pipelines.build.blender.render import render_grid
    from pipelines.build.blender.session import BlenderSession
    from pipelines.build.blender.truth import true_rig

    with BlenderSession() as session:
        session.load(asset)
        with session.capture():
            clip = clips.list_clips()[0].name
        grid = render_grid(session, clip, SPEC, seed=0)
        truth = true_rig(session, grid)
    views = PartViews(grid.part_ids, grid.cameras, grid.part_map.part_names, grid.frame_times, grid.fps,
                      name=asset.stem, clip=grid.clip)
    return views, truth


@pytest.fixture(scope="session")
def procedural(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], tuple[PartViews, TrueRig]]:
    from pipelines.build.sources.procedural import generate_asset

    folder = tmp_path_factory.mktemp("lift-assets")
    cache: dict[tuple[str, int], tuple[PartViews, TrueRig]] = {}

    def get(kind: str, seed: int) -> tuple[PartViews, TrueRig]:
        if (kind, seed) not in cache:
            cache[(kind, seed)] = render_with_truth(Path(generate_asset(kind, seed, folder).local_path))
        return cache[(kind, seed)]

    return get


@pytest.fixture(scope="session")
def lifted(procedural):
    """``lift`` of a procedural render, once per session (tests only read it)."""
    from pipelines.lift.rig import lift

    cache: dict = {}

    def get(kind: str, seed: int, naive: bool = False):
        if (kind, seed, naive) not in cache:
            cache[(kind, seed, naive)] = lift(procedural(kind, seed)[0], naive=naive)
        return cache[(kind, seed, naive)]

    return get
