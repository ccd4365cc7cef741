"""Round trip: the exported .glb passes the project's own probe and filters, plays the fitted motion in
Blender, and renders with ``kp20k render``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from flows.render_cli import main as kp20k
from pipelines.build.content import file_sha256
from pipelines.build.filters import check_probe
from pipelines.build.sources.gltf_writer import read_glb
from pipelines.lift.animate import apply
from pipelines.lift.export import to_glb
from schemas.filters import FilterRules


def test_the_glb_is_an_accepted_rig_that_plays_its_motion_and_renders(lifted, tmp_path: Path) -> None:
    from pipelines.build.blender import clips, scene
    from pipelines.build.blender.probe import probe_asset
    from pipelines.build.blender.session import BlenderSession

    rig = lifted("biped", 0)
    path = tmp_path / "biped-rig.glb"
    path.write_bytes(to_glb(rig))
    doc, _ = read_glb(path.read_bytes())
    assert len(doc["skins"]) == 1 and len(doc["skins"][0]["joints"]) == len(rig.skeleton.joints)

    with BlenderSession() as session:
        report = probe_asset(session, path, file_sha256(path))
        assert report.ok and check_probe(report, FilterRules()) is None  # accepted as it stands
        assert report.n_armatures == 1 and report.n_skinned_meshes == 1 and report.n_unweighted_vertices == 0
        assert report.max_weight_sum_error < 1e-3
        (clip,) = report.clips
        assert clip.name == rig.views.clip and clip.motion > FilterRules().min_motion
        with session.capture():
            playing = clips.find_clip(clip.name)
            clips.play(playing)
            (mesh,) = scene.renderable_meshes()
            last = scene.evaluated_positions(mesh, scene.set_frame(playing.frame_end))
    # linear blend skinning of the rest mesh with the fitted last-frame transforms, in numpy
    moved = np.stack([apply(m, rig.mesh.vertices) for m in rig.motion[-1]], axis=1)
    expected = np.einsum("nb,nbd->nd", rig.weights, moved)
    assert np.abs(expected - rig.mesh.vertices).max() > 0.02  # the clip does move the mesh
    distance, _ = cKDTree(last).query(expected)
    assert distance.max() < 2e-3  # Blender plays what the lift fitted (float32 in the file)

    out = tmp_path / "render"
    args = ["render", str(path), "--out", str(out), "--views", "2", "--frames", "2", "--resolution", "32", "--samples", "1"]
    assert kp20k(args) == 0
    record = json.loads((out / "sample.json").read_text())
    assert record["part_map"]["part_names"]  # the rig's bones became parts again
    assert (np.asarray(Image.open(out / "alpha" / "v00_f01.png")) == 255).mean() > 0.02
