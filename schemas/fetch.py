"""Fetch settings: timeouts, retries and where each source's bytes come from.

Defined here, not in :mod:`pipelines.build.fetch`, so the build parameters (``BuildParams.fetch``) can
carry them: ``schemas`` never imports from ``pipelines``. ``pipelines.build.fetch.FetchConfig`` is this
class under its older name.

The settings are stored with a flow run's parameters (the Prefect UI shows them): put no
credentials in the base URLs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class FetchSettings(BaseModel):
    """Timeouts, retries and where each source's bytes come from (overridable for mirrors and tests)."""

    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(60.0, gt=0, description="seconds without a byte before giving up")
    attempt_seconds: float = Field(900.0, gt=0, description="cap on one HTTP attempt, however it trickles")
    retries: int = Field(3, ge=0, description="extra attempts after a transient failure")
    backoff_seconds: float = Field(1.0, ge=0, description="first back-off; doubles per retry")
    backoff_max_seconds: float = Field(30.0, ge=0)
    max_bytes: int = Field(2 << 30, gt=0, description="larger objects are refused")
    git_timeout: float = Field(300.0, gt=0, description="seconds for each git call")
    github_base: str = "https://github.com"
    sketchfab_base: str = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"
    sketchfab_object_paths: str | None = Field(
        None,
        description="object-paths.json.gz of Objaverse 1.0 (uid -> path in the repository); "
        "None in a build: the one in the Objaverse download dir",
    )
    thingiverse_base: str = "https://www.thingiverse.com"
    smithsonian_base: str | None = Field(None, description="replaces scheme://host of Smithsonian URLs")
    cache_max_gb: float = Field(
        5.0, ge=0, description="a render worker evicts the downloads of assets it has finished, oldest "
        "first, while its node's fetch cache is larger than this (0: each as soon as its asset is decided)",
    )
    keep_downloads: bool = Field(False, description="never evict downloads (for debugging an asset)")
