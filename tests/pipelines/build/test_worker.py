"""The warm worker over a batch of good and broken assets: samples, reason codes, no lost work."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.build.colour import decode_part_image
from pipelines.build.framepack import unpack
from pipelines.build.sources.procedural import KINDS, generate_asset
from pipelines.build.store import TRANSIENT_REASONS, DatasetStore
from pipelines.version import code_version
from pipelines.build.worker import AssetWorker
from schemas.assets import AssetRef, RejectReason
from schemas.filters import FilterRules
from schemas.parts import PartDecision, PartRules
from schemas.render import RenderSpec
from schemas.samples import Sample, sample_key
from schemas.tables import SAMPLES_SCHEMA, from_table, to_table
from tests import factories

SPEC = RenderSpec(n_views=2, n_frames=2, resolution=32, samples=2, motion_threshold=0.05)


def _ref(path: Path) -> AssetRef:
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "0" * 64
    return AssetRef(file_identifier=f"file://{path.name}", source="local", license="CC0-1.0",
                    file_type=path.suffix.lstrip("."), sha256=sha, local_path=str(path))


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> AssetWorker:
    warm = AssetWorker(SPEC, FilterRules(), threads=2, log_path=tmp_path_factory.mktemp("log") / "worker.log")
    yield warm
    warm.close()


def test_a_batch_of_good_and_broken_assets(worker: AssetWorker, tmp_path: Path, shared_gltf: Path) -> None:
    no_path = _ref(tmp_path / "x.glb").model_copy(update={"local_path": None})
    batch = [
        (_ref(factories.good_glb(tmp_path, "arm")), None),
        (_ref(tmp_path / "missing.glb"), RejectReason.file_missing),
        (_ref(factories.zero_bytes(tmp_path)), RejectReason.empty_file),
        (_ref(factories.random_bytes(tmp_path)), RejectReason.import_error),
        (_ref(factories.truncated_glb(tmp_path)), RejectReason.import_error),
        (_ref(factories.no_armature_glb(tmp_path)), RejectReason.no_armature),
        (_ref(factories.two_armatures_glb(tmp_path)), RejectReason.multiple_armatures),
        (_ref(factories.bad_weights_glb(tmp_path)), RejectReason.bad_weights),
        (_ref(factories.nan_positions_glb(tmp_path)), RejectReason.nan_geometry),
        (no_path, RejectReason.file_missing),
        (_ref(shared_gltf / "CesiumMan.glb"), None),
    ]
    assets_before, renders_before = worker.n_assets, worker.n_renders
    results = [worker.process(asset) for asset, _ in batch]
    for (asset, reason), result in zip(batch, results):
        assert result.asset == asset
        if reason is None:
            assert result.samples and not result.rejections, result.rejections
            assert result.n_renders == len(result.samples) * SPEC.n_views * SPEC.n_frames
        else:
            assert not result.samples
            assert [(r.reason, r.clip, r.sha256) for r in result.rejections] == [(reason, "", asset.sha256)]
            assert result.rejections[0].detail
            assert result.rejections[0].config_hash == SPEC.config_hash()
    assert [r.rejections[0].stage for r in results[1:5]] == ["probe"] * 4
    assert [r.rejections[0].stage for r in results[5:9]] == ["filter"] * 4
    assert worker.n_assets - assets_before == len(batch)
    assert worker.n_renders - renders_before == sum(r.n_renders for r in results)
    assert Path(results[0].log_path).read_text()  # Blender's output, kept for the report


def test_every_fox_clip_becomes_a_sample(worker: AssetWorker, shared_gltf: Path) -> None:
    fox = _ref(shared_gltf / "Fox.glb")
    result = worker.process(fox)
    assert sorted(s.clip for s in result.samples) == ["Run", "Survey", "Walk"]
    ids = {s.sample_id for s in result.samples}
    assert ids == {sample_key(fox.sha256, c, SPEC.config_hash()) for c in ("Run", "Survey", "Walk")}
    chosen = worker.process(fox, clips=["Walk", "Gallop"])
    assert [s.clip for s in chosen.samples] == ["Walk"]
    assert [(r.clip, r.reason) for r in chosen.rejections] == [("Gallop", RejectReason.clip_not_found)]
    walk = next(s for s in result.samples if s.clip == "Walk")
    assert chosen.samples[0].rgb == walk.rgb and chosen.samples[0].parts == walk.parts  # deterministic


def test_samples_hold_the_grid_and_their_provenance(worker: AssetWorker, shared_gltf: Path) -> None:
    asset = _ref(shared_gltf / "RiggedFigure.glb")
    (sample,) = worker.process(asset).samples
    rgb, parts, alpha = unpack(sample.rgb), unpack(sample.parts), unpack(sample.alpha)
    assert rgb.shape == (2, 2, 32, 32, 3) and parts.shape == (2, 2, 32, 32, 3) and alpha.shape == (2, 2, 32, 32)
    ids = decode_part_image(parts, np.asarray(sample.part_map.palette), alpha=alpha)
    np.testing.assert_array_equal(ids >= 0, alpha == 255)
    assert len(np.unique(ids[ids >= 0])) > 1
    assert (sample.n_views, sample.n_frames, sample.height, sample.width) == (2, 2, 32, 32)
    assert len(sample.cameras) == 2 and len(sample.frame_times) == 2
    assert (sample.sha256, sample.file_identifier, sample.license) == (asset.sha256, asset.file_identifier, "CC0-1.0")
    assert RenderSpec.model_validate(json.loads(sample.render_config)).config_hash() == sample.config_hash
    assert sample.code_version == code_version()
    assert sample.probe_seconds > 0 and sample.render_seconds > 0
    assert to_table([sample], Sample).schema == SAMPLES_SCHEMA


# Run in a fresh interpreter: the test session's own allocations (Ray, Prefect, other tests' threads)
# would otherwise be counted as the worker's, depending on which tests ran before.
LEAK_PROBE = """
import json, sys
from pathlib import Path
from pipelines.build.sources.procedural import KINDS, generate_asset
from pipelines.build.worker import AssetWorker
from schemas.filters import FilterRules
from schemas.render import RenderSpec

def rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

folder, spec = Path(sys.argv[1]), RenderSpec.model_validate_json(sys.argv[2])
assets = [generate_asset(kind, seed, folder) for seed in range(2) for kind in KINDS]
worker = AssetWorker(spec, FilterRules(), threads=2, log_path=folder / "worker.log")
worker.process(assets[0])
worker.process(assets[1])
before = rss_mib()
rendered = [bool(worker.process(asset).samples) for asset in assets]
(folder / "leak.json").write_text(json.dumps({"growth_mib": rss_mib() - before, "rendered": rendered}))
"""


def test_a_long_lived_worker_does_not_leak(tmp_path: Path) -> None:
    """Reset between assets keeps memory flat: measured ~0.2 MB per asset, levelling off."""
    run = subprocess.run(
        [sys.executable, "-c", LEAK_PROBE, str(tmp_path), SPEC.model_dump_json()], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "leak.json").read_text())
    assert result["rendered"] and all(result["rendered"])
    assert result["growth_mib"] < 25.0


def process_once(spec: RenderSpec, store: DatasetStore, asset, log_dir: Path):
    """One asset through a worker that reads ``store``'s decisions; (its result, the closed worker)."""
    worker = AssetWorker(spec, FilterRules(), threads=2, log_path=log_dir / "worker.log", lance_uri=store.uri)
    try:
        return worker.process(asset), worker
    finally:
        worker.close()


def test_part_decisions_are_stored_once_and_reused_by_every_render_configuration(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "kp20k"))
    asset = generate_asset("arm", 3, tmp_path)  # two clips: wave and reach
    grids = [SPEC, SPEC.model_copy(update={"n_views": 1, "n_frames": 1, "resolution": 16})]
    results, reused = [], []
    for spec in grids:
        result, worker = process_once(spec, store, asset, tmp_path)
        results.append(result)
        reused.append(worker.n_parts_reused)
        store.write_samples(results[-1].samples)
    first, second = ({s.clip: s for s in result.samples} for result in results)
    assert sorted(first) == sorted(second) == ["reach", "wave"]
    assert reused == [0, 2]  # the second grid decided nothing
    for clip in first:
        assert second[clip].part_map == first[clip].part_map
        assert second[clip].part_decision_id == first[clip].part_decision_id
        assert second[clip].n_frames == 1 and first[clip].n_frames == 2
    assert store.checkout(table="samples").count_rows() == 4
    decisions = from_table(PartDecision, store.read("parts"))
    assert sorted((d.clip, d.decision_id) for d in decisions) == sorted((c, s.part_decision_id) for c, s in first.items())
    assert all(d.rules_hash == SPEC.part_rules_hash() and d.code_version == code_version() for d in decisions)


def test_a_worker_renders_with_the_stored_decision_instead_of_deciding(tmp_path: Path) -> None:
    """A decision planted in the store with its colours reversed is what the sample carries and is
    drawn with; under other part rules the plant is not used and the clip is decided afresh."""
    asset = generate_asset("biped", 1, tmp_path)
    decided = DatasetStore(str(tmp_path / "decided"))
    worker = AssetWorker(SPEC, FilterRules(), threads=2, log_path=tmp_path / "worker.log", lance_uri=decided.uri)
    try:
        (honest,) = worker.process(asset, clips=["walk"]).samples
        decided.write_samples([honest])
        (stored,) = decided.part_decisions(asset.sha256, SPEC.part_rules_hash(), code_version()).values()
        planted = DatasetStore(str(tmp_path / "planted"))
        reversed_map = stored.part_map.model_copy(update={"palette": stored.part_map.palette[::-1]})
        planted.write_part_decisions([stored.model_copy(update={"part_map": reversed_map})])
        worker.lance_uri = planted.uri
        (sample,) = worker.process(asset, clips=["walk"]).samples
    finally:
        worker.close()
    assert sample.part_map == reversed_map != honest.part_map
    palette = np.asarray(reversed_map.palette, np.uint8)
    ids = decode_part_image(unpack(sample.parts), palette, alpha=unpack(sample.alpha))
    np.testing.assert_array_equal(ids, decode_part_image(unpack(honest.parts), np.asarray(honest.part_map.palette)))

    other_rules = SPEC.model_copy(update={"parts": PartRules(max_parts=3)})
    worker = AssetWorker(other_rules, FilterRules(), threads=2, log_path=tmp_path / "worker.log", lance_uri=planted.uri)
    try:
        (fresh,) = worker.process(asset, clips=["walk"]).samples
    finally:
        worker.close()
    assert worker.n_parts_reused == 0
    assert fresh.part_map.n_parts == 3 and fresh.part_decision_id != stored.decision_id


def test_a_clip_of_one_frame_is_rejected_with_its_reason(worker: AssetWorker, tmp_path: Path) -> None:
    asset = _ref(factories.single_frame_glb(tmp_path))
    result = worker.process(asset)
    assert [(r.stage, r.reason, r.clip) for r in result.rejections] == [("filter", RejectReason.no_animation, "swing")]
    lenient = AssetWorker(SPEC, FilterRules(min_frames=1, min_motion=0.0), threads=2, log_path=tmp_path / "lenient.log")
    try:
        result = lenient.process(asset)
    finally:
        lenient.close()
    assert not result.samples
    assert [(r.stage, r.reason, r.clip) for r in result.rejections] == [("parts", RejectReason.clip_too_short, "swing")]
    assert "single frame" in result.rejections[0].detail


def test_a_new_render_configuration_reuses_the_stored_probe(tmp_path: Path) -> None:
    """The probe is keyed by the asset and the probe code, not by the grid: a second configuration
    probes nothing and still renders (the stored probe loaded no scene: the worker loads it)."""
    from pipelines.version import probe_version
    from schemas.tables import ProbeRow

    store = DatasetStore(str(tmp_path / "kp20k"))
    asset = generate_asset("arm", 3, tmp_path)
    results, reused = [], []
    for spec in (SPEC, SPEC.model_copy(update={"n_views": 1, "resolution": 16})):
        result, worker = process_once(spec, store, asset, tmp_path)
        results.append(result)
        reused.append(worker.n_probes_reused)
        store.write_probes([ProbeRow(sha256=asset.sha256, probe_version=probe_version(), probe=results[-1].probe)])
    first, second = results
    assert reused == [0, 1]
    assert second.probe == first.probe and first.probe.ok
    assert sorted(s.clip for s in second.samples) == sorted(s.clip for s in first.samples) == ["reach", "wave"]
    assert {s.n_views for s in second.samples} == {1} and not second.rejections
    assert store.checkout(table="probes").count_rows() == 1


def test_threads_change_no_pixel_and_no_key(tmp_path: Path) -> None:
    """Why ``threads`` is left out of the render configuration's hash: Cycles renders the same pixels
    with 1 and with 2 threads (denoiser on, as by default)."""
    asset = generate_asset("snake", 2, tmp_path)
    out = {}
    for threads in (1, 2):
        spec = SPEC.model_copy(update={"threads": threads, "denoise": True, "samples": 4})
        worker = AssetWorker(spec, FilterRules(), log_path=tmp_path / "worker.log")
        try:
            (out[threads], *_) = worker.process(asset).samples
        finally:
            worker.close()
    one, two = out[1], out[2]
    assert one.sample_id == two.sample_id and one.render_config == two.render_config
    for column in ("rgb", "parts", "alpha"):
        np.testing.assert_array_equal(unpack(getattr(one, column)), unpack(getattr(two, column)))


def test_a_staging_worker_writes_a_fragment_and_renders_no_clip_already_in_the_table(tmp_path: Path) -> None:
    """A build's worker returns fragment metadata, not samples; run again on an asset whose samples
    are committed (a kill after the samples commit, before the assets row), it renders nothing."""
    from pipelines.version import probe_version
    from schemas.tables import ProbeRow

    store = DatasetStore(str(tmp_path / "kp20k"))
    asset = generate_asset("arm", 3, tmp_path)  # two clips: wave and reach
    results = []
    for _ in range(2):
        worker = AssetWorker(SPEC, FilterRules(), threads=2, log_path=tmp_path / "worker.log", lance_uri=store.uri,
                             stage_samples=True)
        try:
            results.append(worker.process(asset))
        finally:
            worker.close()
        staged = results[-1].staged
        assert not results[-1].samples and staged is not None
        assert store.commit_staged([staged]) == (len(staged.sample_ids), {asset.sha256})
        store.write_probes([ProbeRow(sha256=asset.sha256, probe_version=probe_version(), probe=results[-1].probe)])
    first, second = results
    keys = sorted(sample_key(asset.sha256, clip, SPEC.config_hash()) for clip in ("reach", "wave"))
    assert sorted(first.staged.sample_ids) == keys and first.n_renders > 0
    assert (second.staged.sample_ids, second.staged.fragments, second.n_renders) == ((), (), 0)
    assert sorted(second.staged.present_ids) == keys
    assert sorted(store.read_samples(columns=["sample_id"]).column("sample_id").to_pylist()) == keys


def test_samples_the_worker_cannot_write_are_rejected_as_write_failed_and_retried_later(tmp_path: Path) -> None:
    """Storage that refuses the fragment (here the table's data folder is a file) costs the asset's
    samples a transient ``write_failed`` rejection naming the table, never the worker."""
    store = DatasetStore(str(tmp_path / "kp20k"))
    data = Path(store.uri) / "samples.lance" / "data"
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(data, ignore_errors=True)
    data.write_bytes(b"not a folder")
    asset = generate_asset("arm", 3, tmp_path)
    worker = AssetWorker(SPEC, FilterRules(), threads=2, log_path=tmp_path / "worker.log", lance_uri=store.uri,
                         stage_samples=True)
    try:
        result = worker.process(asset)
    finally:
        worker.close()
    assert result.staged is None and not result.samples
    assert sorted((r.stage, r.reason, r.clip) for r in result.rejections) == [
        ("write", RejectReason.write_failed, "reach"), ("write", RejectReason.write_failed, "wave")]
    assert all(store.uri in r.detail for r in result.rejections)
    assert RejectReason.write_failed in TRANSIENT_REASONS
