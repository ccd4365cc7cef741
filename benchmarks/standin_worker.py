"""Stand-ins for ``benchmarks/scale_dry_run.py --build N``: a render worker that sleeps instead of
rendering and a fetcher that writes a placeholder instead of downloading, so a build's orchestration
can be measured without Blender or a network.

The worker makes one sample of the real byte size for its grid (a synthetic sample, re-keyed for
each asset) and, given the store's URI, stages it there as the build's workers do. The fetcher
writes ``fetch_bytes`` bytes into the node's cache and evicts them like the real one.

A module of its own, on ``PYTHONPATH``: Ray's actors and their worker processes import it by name."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines.build.fetch import NodeFetcher
from pipelines.build.store import DatasetStore
from pipelines.build.worker import WorkResult
from pipelines.version import code_version
from schemas.assets import AssetRef, ProbeReport
from schemas.parts import part_decision_key
from schemas.render import RenderSpec
from schemas.samples import sample_key
from tests.synthetic_samples import synthetic_sample


class SleepingWorker:
    def __init__(self, spec: RenderSpec, sleep_s: float, lance_uri: str | None = None):
        self.spec, self.sleep_s = spec, sleep_s
        self.store = DatasetStore(lance_uri) if lance_uri else None
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
        result = WorkResult(asset=asset, probe=ProbeReport(sha256=asset.sha256, ok=True), samples=[sample], n_renders=1)
        if self.store is not None:
            result.staged, result.samples = self.store.stage_samples(asset.sha256, [sample]), []
        result.seconds = time.perf_counter() - started
        return result

    def close(self) -> None:
        pass


class PlaceholderFetcher(NodeFetcher):
    """Writes ``FETCH_BYTES`` bytes where the download would land (no hash check: they are not the
    annotation's bytes); eviction is the real one."""

    FETCH_BYTES = 64 << 10

    def fetch(self, asset: AssetRef) -> AssetRef:
        path = self.cache.path_for(asset.sha256, asset.file_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"\0" * self.FETCH_BYTES)
        return asset.model_copy(update={"local_path": str(path)})
