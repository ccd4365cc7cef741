"""Real Blender renders of the project's procedural rigs, tiny, as fit targets (one warm session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.build.blender.render import render_grid
from pipelines.build.blender.session import BlenderSession
from pipelines.build.sources.procedural import generate_asset
from pipelines.fit4d.target import FitTarget, from_grid
from schemas.render import RenderSpec


@pytest.fixture(scope="session")
def fit_session(tmp_path_factory: pytest.TempPathFactory) -> BlenderSession:
    log = tmp_path_factory.mktemp("blender-log") / "session.log"
    with BlenderSession(threads=2, log_path=log) as warm:
        yield warm


def _render(session: BlenderSession, folder: Path, kind: str, clip: str, spec: RenderSpec) -> FitTarget:
    asset = Path(generate_asset(kind, 0, folder).local_path)
    session.load(asset)
    return from_grid(render_grid(session, clip, spec, seed=0), spec, f"{kind}-0")


@pytest.fixture(scope="session")
def static_robot(fit_session: BlenderSession, tmp_path_factory: pytest.TempPathFactory) -> FitTarget:
    """The rigid robot (boxes on bones) at one instant, 8 views around it at 32 px."""
    spec = RenderSpec(n_views=8, n_frames=1, resolution=32, samples=4, threads=2)
    return _render(fit_session, tmp_path_factory.mktemp("robot"), "rigid", "operate", spec)


@pytest.fixture(scope="session")
def moving_arm(fit_session: BlenderSession, tmp_path_factory: pytest.TempPathFactory) -> FitTarget:
    """A bone chain bending over 3 frames, 6 views at 32 px (frames spread by a high motion threshold)."""
    spec = RenderSpec(n_views=6, n_frames=3, resolution=32, samples=4, threads=2, motion_threshold=0.1)
    return _render(fit_session, tmp_path_factory.mktemp("arm"), "arm", "reach", spec)
