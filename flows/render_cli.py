"""The ``kp20k`` command line: look at one asset (``probe``) or render it to a folder (``render``).

Every subcommand sets ``handler(args) -> int`` with ``set_defaults``. The flows add theirs (build,
train, evaluate) through ``build_parser(register=[...])``, each ``register`` adding subparsers to the
same ``subparsers`` action, and call ``main(argv, parser)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pipelines.build.content import file_sha256
from pipelines.contact_sheet import contact_sheet
from pipelines.files import FolderRefused, folder_swapped_in, replace_problem

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# Written last into every complete render folder: ``--out`` replaces a folder only when it holds this.
RENDER_MARKER = ".kp20k-render"
RENDERED = "kp20k render"  # what --out holds, in messages

EPILOG = """examples:
  kp20k probe Fox.glb
  kp20k render Fox.glb --out fox-walk --clip Walk --views 4 --frames 3 --resolution 128
  kp20k render Fox.glb --out fox-draft --preset draft --resolution 512
"""


def build_parser(register: Iterable[Register] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kp20k",
        description="KinematicParts20K: rigged, animated 3D assets to multi-view RGB and kinematic-part videos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_probe(subparsers)
    _add_render(subparsers)
    for add in register:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args))


def _add_probe(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    probe = subparsers.add_parser(
        "probe",
        help="print what Blender finds in an asset, as JSON",
        description="Load ASSET in Blender and print its ProbeReport as JSON: armatures, bones, meshes, "
        "clips with frame ranges and motion, skin-weight sanity and bounds. Exit status 1 when the file "
        "cannot be read (the report says why).",
    )
    probe.add_argument("asset", type=Path, metavar="ASSET", help=".glb, .gltf, .fbx or .blend file")
    probe.set_defaults(handler=_probe)


def _add_render(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from schemas.render import PRESETS, RenderSpec

    defaults = RenderSpec()
    render = subparsers.add_parser(
        "render",
        help="render one clip of an asset into a folder of PNGs and a contact sheet",
        description="Render one clip of ASSET on the view x frame grid and write OUT/: rgb/, parts/ and "
        "alpha/ (v{view}_f{frame}.png), contact_sheet.png (an RGB row and a part row per view), "
        "sample.json (cameras, palette, bone-to-part map, frame times, normalisation, config) and "
        "blender.log (everything Blender printed). The folder appears only once complete; an existing "
        "OUT is replaced only when it is a previous kp20k render, anything else is refused and left as it is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    render.add_argument("asset", type=Path, metavar="ASSET", help=".glb, .gltf, .fbx or .blend file")
    render.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder; an existing one is replaced only if it is a previous kp20k render")
    render.add_argument("--clip", help="clip (action) to render; default: the first clip by name")
    render.add_argument("--views", type=int, default=defaults.n_views, help="azimuths on the orbit, from 0")
    render.add_argument("--frames", type=int, default=defaults.n_frames, help="frames sampled from the clip")
    render.add_argument("--resolution", type=int, default=defaults.resolution, help="image width and height")
    render.add_argument(
        "--preset", choices=list(PRESETS), default=defaults.preset,
        help="sampling recipe, measured in docs/rendering.md: draft (fastest, still at or above the PSNR of "
        "objaverse-xl's render script), dataset (the build's recipe), hero (for figures); it also sets --samples",
    )
    render.add_argument("--samples", type=int, help="Cycles samples per RGB pixel (default: the preset's)")
    render.add_argument("--no-denoise", action="store_true", help="turn OpenImageDenoise off")
    render.add_argument("--elevation", type=float, default=defaults.elevation_deg, help="camera elevation, degrees")
    render.add_argument("--fov", type=float, default=defaults.fov_deg, help="horizontal field of view, degrees")
    framing = render.add_mutually_exclusive_group()
    framing.add_argument(
        "--fill", type=float, default=defaults.frame_fill,
        help="fit the camera distance so the object spans this fraction of the image where it reaches furthest",
    )
    framing.add_argument(
        "--distance", type=float, help="fixed camera distance in normalised units, instead of --fill"
    )
    render.add_argument(
        "--motion-threshold", type=float, default=defaults.motion_threshold,
        help="frame stride grows until consecutive frames differ by this fraction of the object's size",
    )
    render.add_argument("--seed", type=int, default=defaults.seed, help="render seed")
    render.add_argument("--threads", type=int, default=0, help="Cycles threads (0: all cores)")
    render.set_defaults(handler=_render)


def _probe(args: argparse.Namespace) -> int:
    from pipelines.build.blender.probe import probe_asset
    from pipelines.build.blender.session import BlenderSession

    with BlenderSession() as session:
        report = probe_asset(session, args.asset, _sha256(args.asset))
    print(report.model_dump_json(indent=2))
    return 0 if report.ok else 1


def _render(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from tqdm import tqdm

    from pipelines.build.blender.errors import BlenderStageError
    from pipelines.build.blender.probe import probe_asset
    from pipelines.build.blender.render import render_grid
    from pipelines.build.blender.session import BlenderSession
    from pipelines.build.parts import PartsError
    from pipelines.build.worker import object_seed

    try:
        spec = _spec(args)
    except ValidationError as exc:
        print(f"kp20k render: invalid settings: {exc}", file=sys.stderr)
        return 2
    problem = replace_problem(args.out.absolute(), RENDER_MARKER, RENDERED)
    if problem:
        print(f"kp20k render: {problem}", file=sys.stderr)
        return 2
    sha256 = _sha256(args.asset)
    with BlenderSession(threads=spec.threads) as session:
        report = probe_asset(session, args.asset, sha256)
        if not report.ok:
            print(f"kp20k: cannot read {args.asset}: {report.reason.value}: {report.detail}", file=sys.stderr)
            return 1
        clip = args.clip or (report.clips[0].name if report.clips else None)
        if clip is None:
            print(f"kp20k: {args.asset} has no animation clip", file=sys.stderr)
            return 1
        # Blender's output goes to the session log through descriptor 2; the bar gets its own copy.
        terminal = os.fdopen(os.dup(2), "w")
        with terminal, tqdm(total=spec.n_views * spec.n_frames, desc=f"render {clip}", unit="image", file=terminal) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            try:
                grid = render_grid(session, clip, spec, object_seed(spec, sha256), progress)
            except (BlenderStageError, PartsError) as exc:
                print(f"kp20k: cannot render {args.asset} clip {clip!r}: {exc.reason.value}: {exc.detail}", file=sys.stderr)
                print(f"kp20k: Blender's output ends with:\n{session.log_tail()}", file=sys.stderr)
                return 1
        try:
            with folder_swapped_in(args.out, RENDER_MARKER, RENDERED) as staging:
                _write_render(staging, args.asset, sha256, spec, grid, session.log_path)
        except FolderRefused as exc:
            print(f"kp20k render: {exc}", file=sys.stderr)
            return 2
    print(f"wrote {args.out} ({grid.n_renders} images, {grid.part_map.n_parts} parts, {grid.timings['total']:.1f} s)")
    return 0


def _spec(args: argparse.Namespace):
    from schemas.render import PRESETS, RenderSpec

    defaults = RenderSpec()
    return RenderSpec(
        n_views=args.views,
        n_frames=args.frames,
        resolution=args.resolution,
        samples=args.samples if args.samples is not None else PRESETS[args.preset].samples,
        preset=args.preset,
        denoise=not args.no_denoise,
        elevation_deg=args.elevation,
        fov_deg=args.fov,
        frame_fill=None if args.distance is not None else args.fill,
        camera_distance=args.distance if args.distance is not None else defaults.camera_distance,
        motion_threshold=args.motion_threshold,
        seed=args.seed,
        threads=args.threads,
    )


def _write_render(folder: Path, asset: Path, sha256: str, spec, grid, log: Path) -> None:
    from PIL import Image

    from pipelines.version import code_version

    for kind, images in (("rgb", grid.rgb), ("parts", grid.parts), ("alpha", grid.alpha)):
        (folder / kind).mkdir(parents=True)
        for v in range(images.shape[0]):
            for f in range(images.shape[1]):
                Image.fromarray(images[v, f]).save(folder / kind / f"v{v:02d}_f{f:02d}.png")
    rows = [row for v in range(grid.rgb.shape[0]) for row in (("", list(grid.rgb[v])), ("", list(grid.parts[v])))]
    contact_sheet(rows).save(folder / "contact_sheet.png")
    record = {
        "asset": str(asset),
        "sha256": sha256,
        "clip": grid.clip,
        "fps": grid.fps,
        "frame_times": grid.frame_times,
        "grid": {"views": int(grid.rgb.shape[0]), "frames": int(grid.rgb.shape[1]), "height": int(grid.rgb.shape[2]),
                 "width": int(grid.rgb.shape[3])},
        "cameras": [c.model_dump() for c in grid.cameras],
        "part_map": grid.part_map.model_dump(),
        "normalisation": {"scale": grid.normalisation_scale, "offset": grid.normalisation_offset,
                          "meaning": "normalised = (original + offset) * scale"},
        "render_config": spec.model_dump(mode="json"),
        "config_hash": spec.config_hash(),
        "code_version": code_version(),
        "timings": grid.timings,
    }
    (folder / "sample.json").write_text(json.dumps(record, indent=2))
    shutil.copyfile(log, folder / "blender.log")


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return ""  # the probe reports the missing or unreadable file with its reason code


if __name__ == "__main__":
    sys.exit(main())
