"""A rigged, animated .blend carrying Python goes through the render worker, imported and rendered,
and none of its Python runs.

Two ways a .blend carries code: a text block registered as a module (run on load) and a driver with
a scripted expression (run whenever the depsgraph evaluates it, so at every rendered frame). Each
writes its own marker file. The file is built in a separate Blender, which then opens it the way a
trusting user would: both markers appear there, so the file's code is live (the control), and the
markers are removed before the worker sees the file. ``test_session.py`` covers a plain .blend on
load; this covers the whole worker path, rendering included.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.build.content import file_sha256
from pipelines.build.worker import AssetWorker
from schemas.assets import AssetRef
from schemas.filters import FilterRules
from schemas.render import RenderSpec

REPO_ROOT = Path(__file__).resolve().parents[4]
SPEC = RenderSpec(n_views=2, n_frames=2, resolution=32, samples=2, denoise=False)

BUILD_AND_TRUST = """
import sys
from pathlib import Path
import bpy
sys.path.insert(0, {repo!r})
from pipelines.build.sources.procedural import generate_rig_bytes

glb, blend = Path({glb!r}), Path({blend!r})
glb.write_bytes(generate_rig_bytes("arm", 0))
bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
bpy.ops.import_scene.gltf(filepath=str(glb))
text = bpy.data.texts.new("autorun.py")
text.write("from pathlib import Path\\nPath({on_load!r}).write_text('ran on load')\\n")
text.use_module = True
mesh = next(o for o in bpy.data.objects if o.type == "MESH")
mesh["probe"] = 0.0
driver = mesh.driver_add('["probe"]').driver
driver.type = "SCRIPTED"
driver.expression = "0 * __import__('pathlib').Path({on_frame!r}).write_text('ran on a frame')"
bpy.ops.wm.save_as_mainfile(filepath=str(blend))

# The control: a Blender that trusts the file runs both.
bpy.context.preferences.filepaths.use_scripts_auto_execute = True
bpy.ops.wm.open_mainfile(filepath=str(blend), use_scripts=True)
bpy.context.scene.frame_set(2)
"""


@pytest.fixture(scope="module")
def armed_blend(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("armed-blend")
    blend, markers = folder / "armed.blend", [folder / "on-load.txt", folder / "on-frame.txt"]
    code = BUILD_AND_TRUST.format(repo=str(REPO_ROOT), glb=str(folder / "arm.glb"), blend=str(blend),
                                  on_load=str(markers[0]), on_frame=str(markers[1]))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m.read_text() for m in markers] == ["ran on load", "ran on a frame"]
    for marker in markers:
        marker.unlink()
    return blend, markers


def test_an_armed_blend_is_imported_and_rendered_and_its_python_never_runs(armed_blend, tmp_path: Path) -> None:
    blend, markers = armed_blend
    asset = AssetRef(file_identifier=f"file://{blend}", source="local", license="CC0-1.0", file_type="blend",
                     sha256=file_sha256(blend), local_path=str(blend))
    worker = AssetWorker(SPEC, FilterRules(), threads=2, log_path=tmp_path / "worker.log")
    try:
        result = worker.process(asset)
    finally:
        worker.close()
    assert result.probe is not None and result.probe.ok, result.probe
    assert result.samples and not result.rejections, result.rejections
    assert result.n_renders > 0
    assert [m.exists() for m in markers] == [False, False]
