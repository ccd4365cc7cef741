"""A long-lived render worker: one warm Blender turning assets into samples, one asset at a time.

For each asset: probe, filter, then per accepted clip parts + render + frame packs -> ``Sample``; the
session is reset afterwards. A bad asset never raises: every failure becomes a ``Rejection`` with a
reason code, and the worker is ready for the next asset. (A crash or hang of Blender itself kills the
process; the render pool catches that, records ``crashed`` / ``timeout`` and starts a new worker.)

Clips: by default every clip of the asset that passes the filters is rendered (Fox.glb gives three
samples); ``clips`` picks some by name.

Parts: a clip's part decision belongs to (asset, clip, part rules, code version), not to the render
grid. Given the store's ``lance_uri``, the worker looks up the decisions already stored for the asset
and renders with them; a clip without one is decided from the whole clip, and its sample carries the
decision so that the store records it (``parts`` table) when the sample is written.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from pipelines.build import filters
from pipelines.build.blender.errors import BlenderStageError
from pipelines.build.blender.probe import probe_asset
from pipelines.build.blender.render import RenderedGrid, render_grid
from pipelines.build.blender.session import BlenderSession
from pipelines.build.framepack import pack
from pipelines.build.parts import PartsError
from pipelines.build.store import DatasetStore, StagedSamples, StoreError
from pipelines.version import code_version, probe_version
from schemas.assets import AssetRef, ProbeReport, RejectReason, Rejection
from schemas.filters import FilterRules
from schemas.parts import PartDecision, part_decision_key
from schemas.render import RenderSpec
from schemas.samples import Sample, sample_key


T = TypeVar("T")


@dataclass
class WorkResult:
    asset: AssetRef
    probe: ProbeReport | None
    samples: list[Sample] = field(default_factory=list)  # empty when ``staged`` holds them
    rejections: list[Rejection] = field(default_factory=list)
    staged: StagedSamples | None = None  # the samples, written as a fragment of the store's table
    seconds: float = 0.0
    n_renders: int = 0
    log_path: str | None = None  # everything Blender printed in this worker's session


def object_seed(spec: RenderSpec, sha256: str) -> int:
    """The per-object seed (elevation draws): stable for the same spec seed and content."""
    return int.from_bytes(hashlib.sha256(f"{spec.seed}\x00{sha256}".encode()).digest()[:8], "little")


class AssetWorker:
    """Renders assets with one warm :class:`BlenderSession`; ``threads`` defaults to ``spec.threads``.

    ``n_assets`` and ``n_renders`` count this worker's lifetime work, so a pool can recycle it after
    N assets (long-lived Blender processes have been seen to hang after hundreds of renders);
    ``n_parts_reused`` counts the clips rendered with a part decision read from the store at
    ``lance_uri`` (None: no store, every clip is decided), ``n_probes_reused`` the assets whose probe
    report came from the store (a new render configuration probes nothing already probed).

    With ``stage_samples`` (a build's workers), the samples do not come back: they are written to the
    store's ``samples`` table as an uncommitted fragment (``WorkResult.staged``) for the build's
    driver to commit, and clips whose sample the table already holds are not rendered again.
    """

    def __init__(
        self,
        spec: RenderSpec,
        filters: FilterRules,
        threads: int | None = None,
        log_path: str | Path | None = None,
        lance_uri: str | None = None,
        stage_samples: bool = False,
    ) -> None:
        if stage_samples and lance_uri is None:
            raise ValueError("stage_samples needs the store's lance_uri")
        self.spec = spec
        self.stage_samples = stage_samples
        self.filters = filters
        self.session = BlenderSession(threads=spec.threads if threads is None else threads, log_path=log_path)
        self.config_hash = spec.config_hash()
        self.rules_hash = spec.part_rules_hash()
        self.code_version = code_version()
        self.lance_uri = lance_uri
        self._store: DatasetStore | None = None
        self.n_assets = 0
        self.n_renders = 0
        self.n_parts_reused = 0
        self.n_probes_reused = 0
        self.probe_version = probe_version()

    def process(self, asset: AssetRef, clips: list[str] | None = None) -> WorkResult:
        started = time.perf_counter()
        result = WorkResult(asset=asset, probe=None, log_path=str(self.session.log_path))
        try:
            self._process(asset, clips, result)
        finally:
            self.session.reset()
            self.n_assets += 1
            self.n_renders += result.n_renders
            result.seconds = time.perf_counter() - started
        return result

    def close(self) -> None:
        self.session.close()

    def _process(self, asset: AssetRef, clips: list[str] | None, result: WorkResult) -> None:
        if asset.local_path is None:
            result.rejections.append(self._reject(asset, "fetch", RejectReason.file_missing, "asset has no local_path"))
            return
        probe = self._from_store("probe", lambda store: store.stored_probe(asset.sha256, self.probe_version), None)
        loaded = probe is None
        if probe is None:
            probe = probe_asset(self.session, asset.local_path, asset.sha256)
        else:
            self.n_probes_reused += 1
        result.probe = probe
        accepted, rejected = filters.select_clips(probe, self.filters, clips)
        stage = "probe" if not probe.ok else "filter"
        result.rejections += [self._reject(asset, stage, reason, detail, clip) for clip, reason, detail in rejected]
        # Samples of this asset can already be in the table only if an earlier run got as far as its
        # probe (a kill between a shard's commits, a relaxed filter): only then is it worth a lookup.
        present = self._present_samples(asset.sha256, accepted) if self.stage_samples and not loaded else set()
        accepted = [clip for clip in accepted if sample_key(asset.sha256, clip, self.config_hash) not in present]
        stored = self._stored_decisions(asset.sha256) if accepted else {}
        for n, clip in enumerate(accepted):
            try:
                # Rendering changes the scene (materials, hidden objects): every clip after the first
                # starts clean, and a stored probe loaded nothing.
                if n or not loaded:
                    self.session.load(asset.local_path)
                known = stored[clip].part_map if clip in stored else None
                grid = render_grid(self.session, clip, self.spec, object_seed(self.spec, asset.sha256), parts=known)
                self.n_parts_reused += known is not None
            except (BlenderStageError, PartsError) as exc:
                stage = "parts" if isinstance(exc, PartsError) else "render"
                result.rejections.append(self._reject(asset, stage, exc.reason, exc.detail, clip))
                continue
            except Exception as exc:  # noqa: BLE001 - one asset's surprise must not lose the batch
                detail = f"{type(exc).__name__}: {exc}"[:500]
                result.rejections.append(self._reject(asset, "render", RejectReason.render_failed, detail, clip))
                continue
            result.n_renders += grid.n_renders
            result.samples.append(self._sample(asset, probe, grid))
        if self.stage_samples:
            self._stage(asset, result, sorted(present))

    def _stage(self, asset: AssetRef, result: WorkResult, present: list[str]) -> None:
        """Write the result's samples to the store as a fragment; a storage failure rejects them
        (``write_failed``, tried again by the next refresh) instead of losing the worker."""
        try:
            store = self._store or DatasetStore(self.lance_uri)
            result.staged = store.stage_samples(asset.sha256, result.samples, present)
        except (StoreError, OSError, ValueError) as exc:
            detail = f"samples not written to {self.lance_uri}: {type(exc).__name__}: {exc}"[:500]
            result.rejections += [self._reject(asset, "write", RejectReason.write_failed, detail, s.clip) for s in result.samples]
        result.samples = []

    def _present_samples(self, sha256: str, clips: list[str]) -> set[str]:
        """The sample keys of these clips that the store already holds under this configuration."""
        keys = [sample_key(sha256, clip, self.config_hash) for clip in clips]
        return self._from_store("samples already written", lambda store: store.present_keys("samples", keys), set())

    def _stored_decisions(self, sha256: str) -> dict[str, PartDecision]:
        """The asset's stored part decisions under this worker's part rules and code version."""
        return self._from_store(
            f"part decisions of {sha256}", lambda store: store.part_decisions(sha256, self.rules_hash, self.code_version), {}
        )

    def _from_store(self, what: str, read: Callable[[DatasetStore], T], default: T) -> T:
        """``read`` on the store at ``lance_uri``, or ``default`` when there is none. A store that cannot
        be read costs only the time to work it out again (probes and decisions are deterministic)."""
        if self.lance_uri is None:
            return default
        try:
            if self._store is None or self._store.uri != self.lance_uri.rstrip("/"):
                self._store = DatasetStore(self.lance_uri)  # each read checks out the latest version
            return read(self._store)
        except (StoreError, OSError, ValueError) as exc:
            with self.session.capture():
                print(f"kp20k worker: {what} not read from {self.lance_uri}, working it out again: {exc}")
            return default

    def _sample(self, asset: AssetRef, probe: ProbeReport, grid: RenderedGrid) -> Sample:
        n_views, n_frames, height, width = grid.part_ids.shape
        return Sample(
            sample_id=sample_key(asset.sha256, grid.clip, self.config_hash),
            sha256=asset.sha256,
            file_identifier=asset.file_identifier,
            source=asset.source,
            license=asset.license,
            clip=grid.clip,
            fps=grid.fps,
            frame_times=grid.frame_times,
            n_views=n_views,
            n_frames=n_frames,
            height=height,
            width=width,
            cameras=grid.cameras,
            part_map=grid.part_map,
            part_decision_id=part_decision_key(asset.sha256, grid.clip, self.rules_hash, self.code_version),
            normalisation_scale=grid.normalisation_scale,
            normalisation_offset=grid.normalisation_offset,
            rgb=pack(grid.rgb),
            parts=pack(grid.parts),
            alpha=pack(grid.alpha),
            render_config=self.spec.canonical_json(),
            config_hash=self.config_hash,
            code_version=self.code_version,
            probe_seconds=probe.seconds,
            render_seconds=grid.timings["total"],
        )

    def _reject(
        self, asset: AssetRef, stage: str, reason: RejectReason, detail: str, clip: str = ""
    ) -> Rejection:
        return Rejection(
            sha256=asset.sha256,
            file_identifier=asset.file_identifier,
            source=asset.source,
            stage=stage,
            reason=reason,
            detail=detail,
            clip=clip,
            config_hash=self.config_hash,
            code_version=self.code_version,
            rules_hash=self.filters.rules_hash() if stage == "filter" else None,
        )


def worker_logging_to(
    log_dir: str | Path, spec: RenderSpec, filters: FilterRules, lance_uri: str | None = None, stage_samples: bool = False
) -> AssetWorker:
    """A worker whose Blender output goes to ``log_dir/blender-<host>-<pid>.log``, reusing the part
    decisions stored at ``lance_uri`` (and, with ``stage_samples``, writing its samples there).

    The log outlives the worker on purpose: a worker killed on a timeout cannot clean up after
    itself, and its log is what says why. One file per worker process; the build keeps only the newest
    (``flows.build.WORKER_LOGS_KEPT``).
    """
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"blender-{socket.gethostname()}-{os.getpid()}.log"
    return AssetWorker(spec, filters, log_path=log_path, lance_uri=lance_uri, stage_samples=stage_samples)
