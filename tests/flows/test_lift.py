"""lift-rigs on the local stack's Prefect server, over a real samples table and over render folders,
and the ``kp20k rig`` command: rigs written once, bad samples reported without losing the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.lift import lift_rigs
from pipelines.build.sources.gltf_writer import read_glb
from pipelines.build.sources.procedural import generate_asset
from pipelines.build.store import DatasetStore
from pipelines.build.worker import AssetWorker
from pipelines.lift.table import read_rigs
from schemas.filters import FilterRules
from schemas.render import RenderSpec

pytestmark = pytest.mark.usefixtures("prefect_api")

SPEC = RenderSpec(n_views=8, n_frames=3, resolution=64, samples=1, denoise=False, motion_threshold=0.05)
RENDER_ARGS = ["--views", "8", "--frames", "3", "--resolution", "64", "--samples", "1", "--no-denoise",
               "--motion-threshold", "0.05"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[str, str]:
    """A samples table holding one rendered arm, and its sample id."""
    folder = tmp_path_factory.mktemp("lift-data")
    asset = generate_asset("arm", 0, folder / "assets")
    worker = AssetWorker(SPEC, FilterRules())
    try:
        result = worker.process(asset, ["wave"])
    finally:
        worker.close()
    (sample,) = result.samples
    uri = str(folder / "kp20k.lance")
    DatasetStore(uri).write_samples([sample])
    return uri, sample.sample_id


@pytest.fixture(scope="module")
def render_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lift-renders")
    asset = generate_asset("arm", 1, folder / "assets")
    out = folder / "renders" / "arm-1"
    assert main(["render", asset.local_path, "--out", str(out), *RENDER_ARGS]) == 0
    return out


def test_a_table_version_is_lifted_into_the_rigs_table_once(dataset) -> None:
    uri, sample_id = dataset
    state = lift_rigs(samples=uri, return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.written == 1 and report.failed == {} and report.version == DatasetStore(uri).version()
    (row,) = read_rigs(uri)
    assert row.sample_id == sample_id and row.summary.n_bones == report.bones[sample_id] >= 2
    doc, _ = read_glb(row.glb)
    assert len(doc["skins"]) == 1 and len(doc["animations"]) == 1
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert "rigs.lance" in by_key["kp20k-lift-summary"].data and by_key["kp20k-lift-progress"].data == 100.0

    again = lift_rigs(samples=uri)
    assert again.written == 0 and again.already_done == 1 and len(read_rigs(uri)) == 1


def test_render_folders_are_lifted_and_a_broken_one_is_reported(render_folder, tmp_path) -> None:
    broken = render_folder.parent / "broken"
    shutil.copytree(render_folder, broken)
    (broken / "parts" / "v03_f01.png").unlink()
    rigs = str(tmp_path / "rigs")
    report = lift_rigs(samples=str(render_folder.parent), rigs=rigs)
    assert report.written == 1 and list(report.failed) == ["broken"]
    assert "v03_f01.png" in report.failed["broken"] and "render the folder again" in report.failed["broken"]
    assert [r.sample_id for r in read_rigs(rigs)] == ["arm-1"]
    assert (broken / "sample.json").is_file()  # the input is left as it was


def test_kp20k_rig_writes_a_glb_and_explains_bad_input(render_folder, tmp_path, capsys) -> None:
    out = tmp_path / "arm-rig.glb"
    assert main(["rig", str(render_folder), "--out", str(out)]) == 0
    assert "bones for" in capsys.readouterr().out
    doc, _ = read_glb(out.read_bytes())
    assert doc["skins"] and doc["animations"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["rig", str(empty), "--out", str(tmp_path / "none.glb")]) == 1
    assert "kp20k render --out" in capsys.readouterr().err
    assert main(["rig", str(render_folder), "--out", str(tmp_path / "x.obj")]) == 2
    (tmp_path / "bad.obj").write_text("not a mesh\n")
    assert main(["rig", str(render_folder), "--mesh", str(tmp_path / "bad.obj"), "--out", str(tmp_path / "none.glb")]) == 1
    assert "--mesh" in capsys.readouterr().err
    assert not (tmp_path / "none.glb").exists() and not (tmp_path / "x.obj").exists()


def test_a_run_that_dies_midway_keeps_the_rigs_it_committed(render_folder, tmp_path, monkeypatch) -> None:
    import flows.lift

    samples = tmp_path / "renders"
    for name in ("a-first", "b-second"):
        shutil.copytree(render_folder, samples / name)
    real = flows.lift.lift_one

    def dies_on_the_second(views, source, sample_id, version):
        if sample_id == "b-second":
            raise RuntimeError("killed")  # not a bad sample: the run itself fails here
        return real(views, source, sample_id, version)

    monkeypatch.setattr(flows.lift, "COMMIT_EVERY", 1)
    monkeypatch.setattr(flows.lift, "lift_one", dies_on_the_second)
    rigs = str(tmp_path / "rigs")
    assert not lift_rigs(samples=str(samples), rigs=rigs, return_state=True).is_completed()
    assert [r.sample_id for r in read_rigs(rigs)] == ["a-first"]
