"""``kp20k rig``: one sample to a rigged, animated .glb; ``kp20k lift``: the ``lift-rigs`` flow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RIG_EPILOG = """examples:
  kp20k render arm.glb --out arm --views 8 --frames 4 --motion-threshold 0.05
  kp20k rig arm --out arm-rig.glb              # then: kp20k probe arm-rig.glb; kp20k render arm-rig.glb --out again
  kp20k lift data/kp20k.lance --version 3      # every sample of a table version into data/kp20k.lance/rigs.lance
"""


def add_lift_commands(subparsers: argparse._SubParsersAction) -> None:
    rig = subparsers.add_parser(
        "rig", help="lift one sample's part videos to a rigged, animated .glb",
        description="Carve a mesh from the sample's alpha masks, give every vertex a part by voting across "
        "the views, place joints where parts meet (refined with the motion), solve harmonic skinning "
        "weights and fit each bone's motion to the frames; write a .glb with one armature, a skinned mesh "
        "and the clip. SAMPLE is a `kp20k render --out` folder, or a dataset folder with --sample-id.",
        epilog=RIG_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rig.add_argument("sample", type=Path, metavar="SAMPLE_OR_FOLDER", help="render folder, or dataset folder (with --sample-id)")
    rig.add_argument("--out", type=Path, required=True, metavar="ASSET.glb", help="the .glb to write")
    rig.add_argument("--sample-id", help="the samples-table row to lift, when SAMPLE is a dataset folder")
    rig.add_argument("--version", type=int, help="samples-table version (default: the latest)")
    rig.add_argument("--mesh", type=Path, metavar="MESH",
                     help="rig this mesh (.obj, .ply, .off; in the sample's normalised object space, Z up, at its "
                     "first frame) instead of the one carved from the masks")
    rig.set_defaults(handler=run_rig)

    flow = subparsers.add_parser(
        "lift", help="lift every sample of a table version or folder into the rigs table (the lift-rigs flow)",
        description="Run the lift-rigs Prefect flow: every sample of SAMPLES (a dataset folder at --version, a "
        "render folder, or a folder of render folders) becomes a .glb row of <rigs>/rigs.lance. Samples "
        "already lifted by this code version are skipped.",
    )
    flow.add_argument("samples", metavar="SAMPLES", help="dataset folder (samples.lance inside) or folder of renders")
    flow.add_argument("--version", type=int, help="samples-table version (default: the latest)")
    flow.add_argument("--rigs", help="where rigs.lance goes (default: beside the samples, or data/kp20k.lance)")
    flow.add_argument("--limit", type=int, help="at most this many samples")
    flow.set_defaults(handler=run_lift)


def run_rig(args: argparse.Namespace) -> int:
    from pipelines.files import write_atomic
    from pipelines.lift.export import to_glb
    from pipelines.lift.rig import lift
    from pipelines.lift.views import LiftInputError, from_folder, from_sample

    if args.out.suffix.lower() != ".glb":
        print(f"kp20k rig: --out must end in .glb, got {args.out}", file=sys.stderr)
        return 2
    try:
        if args.sample_id:
            views = from_sample(_table_sample(str(args.sample), args.sample_id, args.version))
        elif args.sample.is_dir():
            views = from_folder(args.sample)
        else:
            raise LiftInputError(f"{args.sample} is not a folder: give a `kp20k render --out` folder, "
                                 "or a dataset folder with --sample-id")
        rig = lift(views, mesh=_read_mesh(args.mesh) if args.mesh else None)
    except LiftInputError as exc:
        print(f"kp20k rig: {exc}", file=sys.stderr)
        return 1
    write_atomic(args.out, to_glb(rig))
    s = rig.summary()
    print(f"wrote {args.out}: {s.n_bones} bones for {s.n_parts} parts, {s.n_vertices} vertices, {s.n_frames} frames ({s.seconds:.1f} s)")
    if s.unseen_parts:
        print(f"  parts no view showed (left without a bone): {', '.join(s.unseen_parts)}")
    if s.merged_parts:
        print(f"  merged (moved rigidly together): {'; '.join('+'.join(g) for g in s.merged_parts)}")
    return 0


def _read_mesh(path: Path):
    import numpy as np
    import trimesh

    from pipelines.lift.mesh import Mesh
    from pipelines.lift.views import LiftInputError

    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except (OSError, ValueError) as exc:
        raise LiftInputError(f"cannot read --mesh {path}: {exc}; give an .obj, .ply or .off file") from exc
    if len(loaded.faces) == 0:
        raise LiftInputError(f"--mesh {path} has no triangles")
    return Mesh(np.asarray(loaded.vertices, np.float64), np.asarray(loaded.faces, np.int64))


def _table_sample(uri: str, sample_id: str, version: int | None):
    from pipelines.build.store import open_table, sql_literal
    from pipelines.lift.views import LiftInputError
    from schemas.samples import Sample
    from schemas.tables import from_row

    table = open_table(uri, "samples", version)
    rows = table.to_table(filter=f"sample_id = {sql_literal(sample_id)}", blob_handling="all_binary").to_pylist()
    if not rows:
        raise LiftInputError(f"{uri}/samples.lance (version {table.version}) has no sample {sample_id!r}")
    return from_row(Sample, rows[0])


def run_lift(args: argparse.Namespace) -> int:
    from flows.commands import completed_result
    from flows.prefect_settings import apply_prefect_settings

    apply_prefect_settings()
    from flows.lift import lift_rigs

    state = lift_rigs(samples=args.samples, version=args.version, rigs=args.rigs, limit=args.limit, return_state=True)
    report = completed_result(state, "kp20k lift")
    if report is None:
        return 1
    print(f"lift-rigs: {report.written} rigs written, {report.already_done} already there, {len(report.failed)} failed")
    print(f"Table: {report.rigs_uri}")
    return 0
