"""The warm session: typed load errors, captured output, reset, and no script ever run from an asset."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import bpy
import pytest

from pipelines.build.blender.probe import probe_asset
from pipelines.build.blender.session import AssetLoadError, BlenderSession
from schemas.assets import RejectReason
from tests import factories


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing.glb", RejectReason.file_missing),
        (factories.hanging_asset, RejectReason.file_missing),
        (factories.zero_bytes, RejectReason.empty_file),
        (factories.random_bytes, RejectReason.import_error),
        (factories.truncated_glb, RejectReason.import_error),
        (lambda d: factories.random_bytes(d, name="random.fbx"), RejectReason.import_error),
        (lambda d: factories.random_bytes(d, name="random.blend"), RejectReason.import_error),
        (lambda d: factories.random_bytes(d, name="model.DAE"), RejectReason.no_blender_importer),
        (lambda d: factories.random_bytes(d, name="model.obj"), RejectReason.unsupported_file_type),
    ],
    ids=["missing", "fifo", "zero-bytes", "random-glb", "truncated-glb", "random-fbx", "random-blend", "dae", "obj"],
)
def test_bad_files_raise_typed_errors(session: BlenderSession, tmp_path: Path, make, reason: RejectReason) -> None:
    with pytest.raises(AssetLoadError) as caught:
        session.load(make(tmp_path))
    assert caught.value.reason is reason
    assert caught.value.detail


def test_session_survives_bad_files_and_loads_the_next(session: BlenderSession, tmp_path: Path, procedural) -> None:
    with pytest.raises(AssetLoadError):
        session.load(factories.truncated_glb(tmp_path))
    session.load(procedural("arm"))
    assert [o.type for o in bpy.data.objects if o.type == "ARMATURE"] == ["ARMATURE"]


def test_reset_leaves_an_empty_scene(session: BlenderSession, procedural) -> None:
    session.load(procedural("biped"))
    assert len(bpy.data.objects) and len(bpy.data.actions)
    session.reset()
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions), len(bpy.data.materials)) == (0, 0, 0, 0)


def test_load_replaces_the_previous_asset(session: BlenderSession, procedural) -> None:
    session.load(procedural("biped"))
    session.load(procedural("arm"))
    assert len([o for o in bpy.data.objects if o.type == "MESH"]) == 1
    assert sorted(a.name for a in bpy.data.actions) == ["reach", "wave"]


def test_blender_output_goes_to_the_session_log(tmp_path: Path, capfd: pytest.CaptureFixture, procedural) -> None:
    log = tmp_path / "blender.log"
    with BlenderSession(log_path=log) as own:
        capfd.readouterr()
        own.load(procedural("arm"))
        with pytest.raises(AssetLoadError):
            own.load(factories.truncated_glb(tmp_path))
        out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    text = log.read_text()
    assert "glTF import finished" in text  # the importer's own chatter
    assert "Bad GLB" in text  # the error Blender printed for the broken file


def test_fbx_imports_with_the_cpp_importer(session: BlenderSession, tmp_path: Path, procedural) -> None:
    session.load(procedural("arm"))
    fbx = tmp_path / "arm.fbx"
    with session.capture():
        bpy.ops.export_scene.fbx(filepath=str(fbx), bake_anim=True, add_leaf_bones=False)
    report = probe_asset(session, fbx, "fbx")
    assert report.ok, report.detail
    assert (report.n_armatures, report.n_skinned_meshes, len(report.bones)) == (1, 1, 6)
    assert sorted(c.name.split("|")[-1] for c in report.clips) == ["reach", "wave"]
    assert all(c.motion > 0.5 for c in report.clips)


AUTORUN = """
from pathlib import Path
Path({marker!r}).write_text("ran")
"""


def _blend_with_autorun_script(path: Path, marker: Path) -> None:
    """A .blend whose text block is registered as a module: Blender runs it on load when allowed."""
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    text = bpy.data.texts.new("autorun.py")
    text.write(AUTORUN.format(marker=str(marker)))
    text.use_module = True
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))


def test_blend_scripts_never_run(session: BlenderSession, tmp_path: Path) -> None:
    blend, marker = tmp_path / "autorun.blend", tmp_path / "marker.txt"
    with session.capture():
        _blend_with_autorun_script(blend, marker)
    session.reset()
    session.load(blend)
    assert "autorun.py" in bpy.data.texts  # the file really loaded, script and all
    assert not marker.exists()
    assert bpy.context.preferences.filepaths.use_scripts_auto_execute is False


def test_the_autorun_blend_does_run_where_scripts_are_allowed(tmp_path: Path) -> None:
    """The control: the same file in a Blender that trusts it writes the marker, so the test above
    would catch a session that let it run."""
    blend, marker = tmp_path / "autorun.blend", tmp_path / "marker.txt"
    code = textwrap.dedent(
        f"""
        import bpy, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[4])!r})
        from tests.pipelines.build.blender.test_session import _blend_with_autorun_script
        _blend_with_autorun_script(__import__("pathlib").Path({str(blend)!r}), __import__("pathlib").Path({str(marker)!r}))
        bpy.context.preferences.filepaths.use_scripts_auto_execute = True
        bpy.ops.wm.open_mainfile(filepath={str(blend)!r}, use_scripts=True)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.read_text() == "ran"
