"""One warm Blender per process: safe imports, a cheap reset between assets, captured output.

``bpy`` is a process-wide singleton, so a process should hold one :class:`BlenderSession` at a time
(the render pool gives each worker process its own). Every call into Blender goes through
:meth:`BlenderSession.capture`, which points file descriptors 1 and 2 at the session's log file: Blender
prints from C (render progress, importer warnings) straight to the descriptors, below Python's
``sys.stdout``, so only a descriptor-level redirect keeps that chatter out of the caller's output
while keeping it for the worker's report.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import bpy

from pipelines.build.blender.errors import AssetLoadError
from pipelines.build.gltf_uris import ResourceOutsideFolder, check_resources
from schemas.assets import RejectReason
from schemas.prefilter import NO_BLENDER_IMPORTER

__all__ = ["AssetLoadError", "BlenderSession", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".fbx", ".blend")
_LIBC = ctypes.CDLL(None)


class BlenderSession:
    """A warm ``bpy`` with scripts in assets disabled.

    ``threads`` is the number of CPU threads Cycles may use in this process (0: every core).
    ``log_path`` receives everything Blender prints (appended); by default a temporary file that
    :meth:`close` deletes.
    """

    def __init__(self, threads: int = 1, log_path: str | Path | None = None) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self._owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="kp20k-blender-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._log_text = open(self._log_fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        self._capture_depth = 0
        self.n_loads = 0
        self.reset()

    # -- output capture ------------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator[None]:
        """Send descriptors 1 and 2 to the session log for the duration (re-entrant)."""
        if self._capture_depth:
            self._capture_depth += 1
            try:
                yield
            finally:
                self._capture_depth -= 1
            return
        _flush_all()
        saved = os.dup(1), os.dup(2)
        streams = sys.stdout, sys.stderr
        os.dup2(self._log_fd, 1)
        os.dup2(self._log_fd, 2)
        # Python-level writers too: a test runner or notebook may have replaced sys.stdout/stderr.
        sys.stdout = sys.stderr = self._log_text
        self._capture_depth = 1
        try:
            yield
        finally:
            self._capture_depth = 0
            _flush_all()  # C stdio buffers must reach the log before the descriptors move back
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

    def log_tail(self, n_bytes: int = 2000) -> str:
        """The last ``n_bytes`` of the log, for error details."""
        size = self.log_path.stat().st_size
        with open(self.log_path, "rb") as fh:
            fh.seek(max(0, size - n_bytes))
            return fh.read().decode("utf-8", "replace")

    # -- scene lifecycle -----------------------------------------------------------------------
    def reset(self) -> None:
        """An empty factory scene. ``read_homefile`` takes ~10 ms and frees every datablock (measured
        flat memory over many cycles); deleting datablocks one by one misses scenes, worlds and
        settings a .blend brings with it."""
        with self.capture():
            bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        _forbid_scripts()

    def load(self, path: str | Path) -> None:
        """Reset, then import one asset file. Raises :class:`AssetLoadError` with a reason code."""
        path = Path(path)
        suffix = path.suffix.lower()
        if not path.exists():
            raise AssetLoadError(RejectReason.file_missing, f"no file at {path}")
        if not path.is_file():  # a FIFO or device would block the importer forever: never open it
            raise AssetLoadError(RejectReason.file_missing, f"{path} is not a regular file")
        if path.stat().st_size == 0:
            raise AssetLoadError(RejectReason.empty_file, f"{path} has zero bytes")
        if suffix.lstrip(".") in NO_BLENDER_IMPORTER:  # the prefilter refuses these first; a direct probe lands here
            raise AssetLoadError(RejectReason.no_blender_importer, NO_BLENDER_IMPORTER[suffix.lstrip(".")])
        if suffix not in SUPPORTED_SUFFIXES:
            raise AssetLoadError(
                RejectReason.unsupported_file_type, f"{suffix or 'no suffix'}: supported are {SUPPORTED_SUFFIXES}"
            )
        if suffix in (".glb", ".gltf"):
            try:  # before the importer opens a buffer such as /dev/zero or ../secret.bin
                check_resources(path)
            except ResourceOutsideFolder as exc:
                raise AssetLoadError(exc.reason, exc.detail) from None
        self.reset()
        self.n_loads += 1
        with self.capture():
            try:
                result = _import(path, suffix)
            except Exception as exc:  # noqa: BLE001
                # Importers raise RuntimeError for errors they report and any Python error on data
                # they did not expect (struct, unicode, index errors): all mean the file does not import.
                raise AssetLoadError(RejectReason.import_error, _one_line(exc)) from exc
        if "FINISHED" not in result:
            raise AssetLoadError(RejectReason.import_error, f"importer returned {sorted(result)}")
        _forbid_scripts()
        if not any(obj.type in ("MESH", "ARMATURE", "EMPTY") for obj in bpy.data.objects):
            raise AssetLoadError(RejectReason.import_error, "the file imported no objects")

    def close(self) -> None:
        """Close the log; a temporary log (no ``log_path`` given) is deleted with it."""
        if self._log_fd >= 0:
            self._log_text.close()
            os.close(self._log_fd)
            self._log_fd = -1
            if self._owns_log:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "BlenderSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import(path: Path, suffix: str) -> set[str]:
    filepath = str(path)
    if suffix in (".glb", ".gltf"):
        # The bone-shape object is a display helper that would count as a mesh and render.
        return bpy.ops.import_scene.gltf(filepath=filepath, disable_bone_shape=True)
    if suffix == ".fbx":
        return bpy.ops.wm.fbx_import(filepath=filepath)  # the C++ importer (5.0): exact and ~10x faster
    # .blend: replace the session's file; load_ui=False keeps the current UI, use_scripts=False keeps
    # registered text blocks and driver scripts from running.
    return bpy.ops.wm.open_mainfile(filepath=filepath, load_ui=False, use_scripts=False)


def _forbid_scripts() -> None:
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False


def _flush_all() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    _LIBC.fflush(None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"
