"""``kp20k fit4d`` and the ``fit-4d`` flow: a render folder to an asset folder, a Lance version to one
asset per sample, artifacts for a person, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.fit4d import fit_4d
from pipelines.build.sources.procedural import generate_asset
from pipelines.fit4d.asset import MARKER, TURNTABLE_STEPS, load_asset, render_grid
from schemas.fit4d import FitRecord
from tests.flows.artifact_images import embedded_png
from tests.training_helpers import synthetic_store

FAST = ["--steps", "20", "--gaussians", "150"]


@pytest.fixture(scope="module")
def arm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("arm")
    asset = generate_asset("arm", 0, folder).local_path
    out = folder / "render"
    assert main(["render", asset, "--out", str(out), "--views", "4", "--frames", "2", "--resolution", "32",
                 "--samples", "2"]) == 0
    return out


def test_the_command_writes_an_asset_that_renders_again(arm_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "arm-4d"
    assert main(["fit4d", str(arm_folder), "--out", str(out), *FAST, "--train-views", "0,1,3"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "asset.json", "gaussians.safetensors", "turntable.gif", "contact_sheet.png"])
    model, record = load_asset(out)
    sample = json.loads((arm_folder / "sample.json").read_text())
    assert record.train_views == [0, 1, 3] and record.train_frames == [0, 1] and record.n_gaussians == 150
    assert record.knot_times == sample["frame_times"] and record.part_map.palette == sample["part_map"]["palette"]
    assert record.config.steps == 20 and record.cameras[2].model_dump() == sample["cameras"][2]
    # The saved parameters render what the contact sheet shows in its first row (view 0, fitted RGB).
    again = render_grid(model, record.cameras[:1], record.frame_times, np.asarray(record.part_map.palette, np.uint8))
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert again.rgb.any() and Image.open(out / "turntable.gif").n_frames == TURNTABLE_STEPS
    tile = again.rgb[0, 0]
    assert any(np.array_equal(sheet[top:top + 32, left:left + 32], tile)
               for top in range(0, 64) for left in range(0, sheet.shape[1] - 31))
    # Any folder other than a previous fit is refused and left as it is (replacing: tests/pipelines/fit4d).
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    assert main(["fit4d", str(arm_folder), "--out", str(precious), *FAST]) == 1
    assert "is not a previous fitted asset" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["keep.txt"]


def test_bad_arguments_say_what_to_do(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fit4d", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in ("--out", "--lance", "--train-views", "--steps", "asset.json"))
    assert main(["fit4d", "--out", str(tmp_path / "x")]) == 2
    assert "give a SAMPLE folder, or --lance" in capsys.readouterr().err
    assert main(["fit4d", str(tmp_path), "--out", str(tmp_path / "x"), "--train-views", "0,a"]) == 2
    assert "comma-separated grid indices" in capsys.readouterr().err
    assert main(["fit4d", str(tmp_path), "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["fit4d", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), *FAST]) == 1
    assert "has no sample.json" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_flow_fits_a_table_version_with_progress_and_artifacts(tmp_path: Path) -> None:
    uri = str(tmp_path / "kp20k.lance")
    store = synthetic_store(uri, 2)
    ids = sorted(store.existing_sample_ids())
    state = fit_4d(lance_uri=uri, version=store.version(), limit=2, out=str(tmp_path / "assets"),
                   config={"steps": 3, "n_gaussians": 40}, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert [o.sample for o in report.outcomes] == ids and all(o.ok for o in report.outcomes)
    for sample_id in ids:
        record = FitRecord.model_validate_json((tmp_path / "assets" / sample_id / "asset.json").read_text())
        assert record.sample_id == sample_id and record.source == f"{uri}@v{store.version()}/{sample_id}"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"kp20k-fit4d-progress", "kp20k-fit4d-summary", "kp20k-fit4d-contact-sheet"}
    assert by_key["kp20k-fit4d-progress"].data == pytest.approx(100.0)
    assert all(f"| {i} | fitted |" in by_key["kp20k-fit4d-summary"].data for i in ids)
    png = embedded_png(by_key["kp20k-fit4d-contact-sheet"].data)
    assert png == (tmp_path / "assets" / ids[0] / "contact_sheet.png").read_bytes()


def test_a_sample_id_not_in_the_table_is_named(tmp_path: Path, capsys) -> None:
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 1)
    assert main(["fit4d", "--lance", uri, "--sample-id", "nope", "--out", str(tmp_path / "x"), *FAST]) == 1
    assert "no samples ['nope']" in capsys.readouterr().err and not (tmp_path / "x").exists()
