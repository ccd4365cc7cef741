"""Session-wide test settings: a private Prefect home, quiet analytics, one thread per library; the S3
server fixtures (tests/s3_server.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from flows.prefect_settings import apply_prefect_settings
from tests.s3_server import s3_server, s3_store  # noqa: F401  (fixtures, started on first use)

_HOME = Path(tempfile.mkdtemp(prefix="kp20k-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
apply_prefect_settings()  # the project's own Prefect settings (telemetry off), as every entry point
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_GLTF = REPO_ROOT.parent / "shared" / "assets" / "gltf"


@pytest.fixture(scope="session")
def shared_gltf() -> Path:
    """The real rigged glTF samples beside the checkout; tests using them skip when absent."""
    if not SHARED_GLTF.is_dir():
        pytest.skip(f"shared glTF assets not found at {SHARED_GLTF}")
    return SHARED_GLTF
