"""A stand-in render worker for ``benchmarks/scale_dry_run.py --build N``: it sleeps instead of
rendering and returns one sample of the real byte size for its grid (a synthetic sample, re-keyed
for each asset), so a build's orchestration can be measured without Blender.

A module of its own, on ``PYTHONPATH``: Ray's actors and their worker processes import it by name."""

from __future__ import annotations

import time

from pipelines.build.worker import WorkResult
from pipelines.version import code_version
from schemas.assets import AssetRef, ProbeReport
from schemas.parts import part_decision_key
from schemas.render import RenderSpec
from schemas.samples import sample_key
from tests.synthetic_samples import synthetic_sample


class SleepingWorker:
    def __init__(self, spec: RenderSpec, sleep_s: float):
        self.spec, self.sleep_s = spec, sleep_s
        template = synthetic_sample("0" * 64, spec=spec, code_version=code_version())
        self.template = template.model_copy(update={"render_config": spec.canonical_json()})
        self.n_assets = self.n_renders = 0

    def process(self, asset: AssetRef, clips: list[str] | None = None) -> WorkResult:
        started = time.perf_counter()
        time.sleep(self.sleep_s)
        config_hash, rules_hash = self.spec.config_hash(), self.spec.part_rules_hash()
        sample = self.template.model_copy(update={
            "sha256": asset.sha256, "file_identifier": asset.file_identifier, "source": asset.source,
            "sample_id": sample_key(asset.sha256, self.template.clip, config_hash), "config_hash": config_hash,
            "part_decision_id": part_decision_key(asset.sha256, self.template.clip, rules_hash, code_version()),
        })
        self.n_assets += 1
        self.n_renders += 1
        return WorkResult(asset=asset, probe=ProbeReport(sha256=asset.sha256, ok=True), samples=[sample],
                          seconds=time.perf_counter() - started, n_renders=1)

    def close(self) -> None:
        pass
