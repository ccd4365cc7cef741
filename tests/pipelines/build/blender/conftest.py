"""One warm Blender session for every test in this folder, and the assets they render."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.build.blender.session import BlenderSession
from pipelines.build.sources.procedural import generate_asset


@pytest.fixture(scope="session")
def session(tmp_path_factory: pytest.TempPathFactory) -> BlenderSession:
    log = tmp_path_factory.mktemp("blender-log") / "session.log"
    with BlenderSession(threads=2, log_path=log) as warm:
        yield warm


@pytest.fixture(scope="session")
def procedural(tmp_path_factory: pytest.TempPathFactory):
    """Procedural asset path by kind (seed 0), written once."""
    folder = tmp_path_factory.mktemp("procedural")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = Path(generate_asset(kind, 0, folder).local_path)
        return cache[kind]

    return get
