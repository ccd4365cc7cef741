"""What one run of the build flow did: counts per stage, the Lance versions it left, where it ran."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from pydantic import BaseModel, Field

from schemas.assets import Rejection


class RenderSummary(BaseModel):
    """The render stage: what the pool did and what was committed."""

    processed_sha256: list[str] = Field(default_factory=list, description="assets sent to a worker, in finish order")
    accepted_assets: int = 0
    samples_written: int = 0
    rejections_written: int = 0
    assets_written: int = 0
    shards: int = 0
    n_renders: int = 0
    workers_started: int = Field(0, description="render actors started (each with its first Blender)")
    recycled: int = Field(0, description="Blenders replaced after recycle_after assets (their actors live on)")
    timeouts: int = 0
    crashes: int = 0
    worker_pids: list[int] = Field(default_factory=list, description="the Blender processes that rendered (their log names)")
    actor_pids: list[int] = Field(default_factory=list, description="the Ray actors supervising them")
    node_ips: list[str] = Field(default_factory=list)
    node_ids: list[str] = Field(default_factory=list)
    gcs_address: str = ""
    pool_size: int = 0
    seconds: float = 0.0
    ray_start_s: float = Field(0.0, description="connecting to Ray (starting it, when local)")
    first_worker_s: float = Field(0.0, description="until the first worker held a warm Blender")
    ray_stop_s: float = 0.0


class BuildReport(BaseModel):
    """The flow's return value; training pins ``versions["samples"]``."""

    lance_uri: str
    config_hash: str
    code_version: str
    discovered: int = 0
    prefilter_rejected: int = 0
    candidates: int = 0
    already_decided: int = 0
    fetched: int = 0
    fetch_rejected: int = 0
    render: RenderSummary = Field(default_factory=RenderSummary)
    rejection_reasons: dict[str, int] = Field(default_factory=dict, description="'stage/reason' -> count, this run")
    versions_before: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, int] = Field(default_factory=dict)
    tables: dict[str, tuple[int, int]] = Field(default_factory=dict, description="table -> (fragments, versions kept) after upkeep")
    contact_sheet: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict, description="wall time per stage")
    dead_runs: list[str] = Field(default_factory=list, description="earlier runs on this table found dead and marked Crashed")

    def resume_line(self) -> str:
        """What a person wants to know first: is this run resuming, and how much is left."""
        to_go = self.candidates - self.already_decided
        if self.already_decided or self.dead_runs:
            line = f"resuming: {self.already_decided} of {self.candidates} assets already decided, {to_go} to go"
        else:
            line = f"starting: {to_go} assets to go"
        if self.dead_runs:
            line += "; found dead and marked Crashed: " + ", ".join(self.dead_runs)
        return line

    def stage_counts(self) -> list[dict[str, object]]:
        """Rows for the per-stage counts table: how many went in and how many went on."""
        r = self.render
        return [
            {"stage": "discover", "in": self.discovered, "out": self.discovered},
            {"stage": "prefilter", "in": self.discovered, "out": self.discovered - self.prefilter_rejected},
            {"stage": "plan (skip decided)", "in": self.candidates, "out": self.candidates - self.already_decided},
            {"stage": "fetch", "in": self.candidates - self.already_decided, "out": self.fetched},
            {"stage": "probe/filter/render", "in": self.fetched, "out": r.accepted_assets},
            {"stage": "write samples", "in": r.accepted_assets, "out": r.samples_written},
        ]


def count_reasons(rejections: Iterable[Rejection]) -> Counter[str]:
    return Counter(f"{r.stage}/{r.reason.value}" for r in rejections)
