"""The ``kp20k`` probe and render subcommands, run in-process on real assets."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.render_cli import RENDER_MARKER, build_parser, main
from pipelines.build.colour import decode_part_image
from schemas.assets import ProbeReport, RejectReason

TINY = ["--views", "2", "--frames", "2", "--resolution", "32", "--samples", "2"]


def test_probe_prints_the_report_as_json(shared_gltf: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["probe", str(shared_gltf / "Fox.glb")]) == 0
    report = ProbeReport.model_validate_json(capsys.readouterr().out)
    assert report.ok and [c.name for c in report.clips] == ["Run", "Survey", "Walk"]
    assert len(report.sha256) == 64


def test_probe_of_a_missing_file_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["probe", str(tmp_path / "gone.glb")]) == 1
    assert ProbeReport.model_validate_json(capsys.readouterr().out).reason is RejectReason.file_missing


def test_render_writes_a_folder_to_look_at(shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fox"
    assert main(["render", str(shared_gltf / "Fox.glb"), "--out", str(out), "--clip", "Walk", *TINY]) == 0
    names = [f"v{v:02d}_f{f:02d}.png" for v in range(2) for f in range(2)]
    for kind in ("rgb", "parts", "alpha"):
        assert sorted(p.name for p in (out / kind).iterdir()) == names
    record = json.loads((out / "sample.json").read_text())
    assert record["clip"] == "Walk" and record["grid"] == {"views": 2, "frames": 2, "height": 32, "width": 32}
    assert len(record["cameras"]) == 2 and len(record["frame_times"]) == 2
    assert record["cameras"][0]["convention"] == "opencv"
    palette = np.asarray(record["part_map"]["palette"])
    assert set(record["part_map"]["bone_to_part"].values()) == set(range(len(palette)))
    for name in names:
        parts = np.asarray(Image.open(out / "parts" / name))
        alpha = np.asarray(Image.open(out / "alpha" / name))
        ids = decode_part_image(parts, palette, alpha=alpha)
        np.testing.assert_array_equal(ids >= 0, alpha == 255)
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (2 * 2 * 32, 2 * 32, 3)  # an RGB row and a part row per view
    rgb = np.asarray(Image.open(out / "rgb" / "v01_f00.png"))
    np.testing.assert_array_equal(sheet[64:96, :32], rgb)  # view 1: its RGB row, frame 0
    assert "glTF import finished" in (out / "blender.log").read_text()
    assert (out / RENDER_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["fox"]  # no staging folder left beside it
    assert "wrote" in capsys.readouterr().out


def test_render_of_a_clip_that_does_not_exist_leaves_nothing(
    shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "none"
    assert main(["render", str(shared_gltf / "Fox.glb"), "--out", str(out), "--clip", "Gallop", *TINY]) == 1
    assert "clip_not_found" in capsys.readouterr().err
    assert not out.exists()


def test_render_refuses_invalid_settings(shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["render", str(shared_gltf / "Fox.glb"), "--out", str(tmp_path / "x"), "--views", "0"]
    assert main(args) == 2
    assert "n_views" in capsys.readouterr().err


def test_help_names_the_subcommands_and_their_options() -> None:
    parser = build_parser()
    assert "probe" in parser.format_help() and "render" in parser.format_help()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["render", "--help"])
    assert exited.value.code == 0


def test_render_help_lists_the_grid_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--clip", "--views", "--frames", "--resolution", "--samples", "--fill"):
        assert option in text


def test_other_packages_can_add_subcommands() -> None:
    def add_hello(subparsers: argparse._SubParsersAction) -> None:
        hello = subparsers.add_parser("hello", help="say hello")
        hello.add_argument("--times", type=int, default=1)
        hello.set_defaults(handler=lambda args: 40 + args.times)

    parser = build_parser(register=[add_hello])
    assert main(["hello", "--times", "2"], parser) == 42
    assert "hello" in parser.format_help() and "render" in parser.format_help()


def test_render_with_a_fixed_camera_distance(shared_gltf: Path, tmp_path: Path) -> None:
    out = tmp_path / "far"
    args = ["render", str(shared_gltf / "RiggedSimple.glb"), "--out", str(out), "--distance", "3.0",
            "--views", "1", "--frames", "1", "--resolution", "16", "--samples", "1"]
    assert main(args) == 0
    record = json.loads((out / "sample.json").read_text())
    assert record["cameras"][0]["distance"] == 3.0
    assert record["render_config"]["frame_fill"] is None


SMALLEST = ["--views", "1", "--frames", "1", "--resolution", "16", "--samples", "1"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_refuses_to_replace_a_folder_that_is_not_a_render(
    shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "chapters" / "one.tex").write_text("\\chapter{One}")
    (mine / "notes.txt").write_bytes(b"irreplaceable")
    before = tree(mine)
    assert main(["render", str(shared_gltf / "RiggedSimple.glb"), "--out", str(mine), *SMALLEST]) == 2
    err = capsys.readouterr().err
    assert "not a previous kp20k render" in err and str(mine) in err
    assert tree(mine) == before
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]
    afile = tmp_path / "report.pdf"
    afile.write_bytes(b"%PDF")
    assert main(["render", str(shared_gltf / "RiggedSimple.glb"), "--out", str(afile), *SMALLEST]) == 2
    assert "is not a folder" in capsys.readouterr().err and afile.read_bytes() == b"%PDF"


def test_render_replaces_a_previous_render(shared_gltf: Path, tmp_path: Path) -> None:
    out = tmp_path / "simple"
    asset = str(shared_gltf / "RiggedSimple.glb")
    assert main(["render", asset, "--out", str(out), *SMALLEST]) == 0
    first = json.loads((out / "sample.json").read_text())
    (out / "stale.txt").write_text("from the first render")
    again = ["--views", "2", "--frames", "1", "--resolution", "16", "--samples", "1"]
    assert main(["render", asset, "--out", str(out), *again]) == 0
    second = json.loads((out / "sample.json").read_text())
    assert (first["grid"]["views"], second["grid"]["views"]) == (1, 2)
    assert sorted(p.name for p in (out / "rgb").iterdir()) == ["v00_f00.png", "v01_f00.png"]
    assert not (out / "stale.txt").exists() and (out / RENDER_MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["simple"]  # the previous render and the staging folder are gone


def first_buffer(shared_gltf: Path) -> bytes:
    uri = json.loads((shared_gltf / "SimpleSkin.gltf").read_text())["buffers"][0]["uri"]
    return base64.b64decode(uri.split(",", 1)[1])


def gltf_with_external_buffer(shared_gltf: Path, folder: Path, uri: str) -> Path:
    """SimpleSkin.gltf (a real rigged asset) with its first embedded buffer moved out to ``uri``."""
    document = json.loads((shared_gltf / "SimpleSkin.gltf").read_text())
    document["buffers"][0]["uri"] = uri
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SimpleSkin.gltf"
    path.write_text(json.dumps(document))
    return path


def test_a_buffer_beside_the_gltf_is_read(shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "asset").mkdir()
    (tmp_path / "asset" / "skin.bin").write_bytes(first_buffer(shared_gltf))
    path = gltf_with_external_buffer(shared_gltf, tmp_path / "asset", "skin.bin")
    assert main(["probe", str(path)]) == 0
    assert ProbeReport.model_validate_json(capsys.readouterr().out).ok


@pytest.mark.parametrize("command", ["probe", "render"])
@pytest.mark.parametrize("uri", ["/dev/zero", "../secret.bin", "%2E%2E/secret.bin", "file:///dev/zero"])
def test_a_buffer_outside_the_assets_folder_is_refused_before_blender_opens_it(
    shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str, uri: str
) -> None:
    # A secret that would import cleanly: only the folder rule can refuse it.
    (tmp_path / "secret.bin").write_bytes(first_buffer(shared_gltf))
    path = gltf_with_external_buffer(shared_gltf, tmp_path / "asset", uri)
    out = tmp_path / "out"
    args = ["probe", str(path)] if command == "probe" else ["render", str(path), "--out", str(out), *SMALLEST]
    assert main(args) == 1
    captured = capsys.readouterr()
    if command == "probe":
        report = ProbeReport.model_validate_json(captured.out)
        assert report.reason is RejectReason.resource_outside_folder and uri[:20] in report.detail
    else:
        assert "resource_outside_folder" in captured.err and not out.exists()


def test_a_symlink_in_the_folder_cannot_lead_out_of_it(shared_gltf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = gltf_with_external_buffer(shared_gltf, tmp_path / "asset", "skin.bin")
    (tmp_path / "asset" / "skin.bin").symlink_to("/dev/zero")
    assert main(["probe", str(path)]) == 1
    assert ProbeReport.model_validate_json(capsys.readouterr().out).reason is RejectReason.resource_outside_folder


@pytest.mark.parametrize(("extra", "preset", "samples"), [([], "dataset", None), (["--preset", "draft"], "draft", None),
                                                          (["--preset", "hero", "--samples", "3"], "hero", 3)])
def test_render_preset_sets_the_recipe_and_the_samples_unless_given(extra: list[str], preset: str, samples: int | None) -> None:
    from flows.render_cli import _spec
    from schemas.render import PRESETS

    args = build_parser().parse_args(["render", "x.glb", "--out", "o", *extra])
    spec = _spec(args)
    assert spec.preset == preset
    assert spec.samples == (samples if samples is not None else PRESETS[preset].samples)


def test_render_refuses_an_unknown_preset(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["render", "x.glb", "--out", "o", "--preset", "best"])
    assert "draft" in capsys.readouterr().err
