"""The ``kp20k`` command: the pipeline subcommands (``flows.render_cli``) plus the flows.

``kp20k build`` runs ``build-kinematicparts20k`` in this process on Prefect's ephemeral local API
(or on the server named by ``PREFECT_API_URL``) with small embedded defaults: a handful of procedural
assets, a small grid, a local Ray, and a local Lance folder. It then prints where the table is, three
lines of Python to read it, and where the contact sheet is.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from flows import render_cli as pipeline_cli
from schemas.params import BuildParams, ParamsError

# The demo: small enough to finish in minutes on two CPU cores.
DEMO_COUNT = 6
DEMO_GRID = {"n_views": 4, "n_frames": 4, "resolution": 64, "samples": 8}


def add_flow_commands(subparsers: argparse._SubParsersAction) -> None:
    """Attach the flow subcommands (a ``register`` hook of ``flows.render_cli.build_parser``)."""
    build = subparsers.add_parser("build", help="build or refresh the dataset (the build-kinematicparts20k flow)")
    build.add_argument("--source", choices=["procedural", "local", "objaverse-xl"], default="procedural")
    build.add_argument("--count", type=int, default=DEMO_COUNT, help="procedural: assets to generate")
    build.add_argument("--seed", type=int, help="procedural: first seed")
    build.add_argument("--folder", help="local: folder to scan; procedural: where to write the assets")
    build.add_argument("--objaverse-dir", help="objaverse-xl: where the annotation tables are (~/.objaverse)")
    build.add_argument("--offline", action="store_true", help="objaverse-xl: read only annotations already on disk")
    build.add_argument("--limit", type=int, help="at most this many candidates after the prefilter")
    build.add_argument("--views", type=int, default=DEMO_GRID["n_views"])
    build.add_argument("--frames", type=int, default=DEMO_GRID["n_frames"])
    build.add_argument("--resolution", type=int, default=DEMO_GRID["resolution"])
    build.add_argument("--samples", type=int, default=DEMO_GRID["samples"], help="Cycles samples per RGB pixel")
    build.add_argument("--lance", dest="lance_uri", help="table folder or s3:// URI (default data/kp20k.lance)")
    build.add_argument("--cache-dir")
    build.add_argument("--ray-address", help="join this Ray cluster instead of starting one (or set RAY_ADDRESS)")
    build.add_argument("--workers", dest="pool_size", type=int, help="render workers (default: one per CPU)")
    build.add_argument("--recycle-after", type=int)
    build.add_argument("--timeout", dest="asset_timeout_s", type=float, help="seconds allowed per asset")
    build.add_argument("--shard-size", type=int, help="finished assets per commit")
    build.add_argument("--params", help="JSON object of BuildParams to start from (flags override it)")
    build.add_argument("--json", action="store_true", help="print the build report as JSON")
    build.set_defaults(handler=run_build_command)


def build_params_from_args(args: argparse.Namespace) -> BuildParams:
    data: dict[str, Any] = json.loads(args.params) if args.params else {}
    if not isinstance(data, dict) or not isinstance(data.get("source", {}), dict) or not isinstance(data.get("render", {}), dict):
        raise ParamsError("--params must be a JSON object whose 'source' and 'render' are objects")
    source = data.setdefault("source", {})
    source.setdefault("kind", args.source)
    if source["kind"] == "procedural":
        source.setdefault("count", args.count)
    for key, value in (("seed", args.seed), ("folder", args.folder), ("objaverse_dir", args.objaverse_dir)):
        if value is not None:
            source[key] = value
    if args.offline:
        source["offline"] = True
    render = data.setdefault("render", {})
    for key, value in (("n_views", args.views), ("n_frames", args.frames), ("resolution", args.resolution), ("samples", args.samples)):
        render.setdefault(key, value)
    for key in ("limit", "lance_uri", "cache_dir", "ray_address", "pool_size", "recycle_after", "asset_timeout_s", "shard_size"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    return BuildParams.parse(data)


def run_build_command(args: argparse.Namespace) -> int:
    try:
        params = build_params_from_args(args)
    except json.JSONDecodeError as exc:
        print(f"kp20k build: --params is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except ParamsError as exc:
        print(f"kp20k build: {exc}", file=sys.stderr)
        return 2
    from flows.commands import completed_result
    from flows.prefect_settings import apply_prefect_settings

    apply_prefect_settings()  # before Prefect is imported: telemetry off, a start-up limit for a busy machine
    from flows.artifacts import read_snippet
    from flows.build import (
        build_kinematicparts20k,  # Prefect and Ray load only for the flow commands
    )

    state = build_kinematicparts20k(**params.model_dump(mode="json"), return_state=True)
    report = completed_result(state, "kp20k build")
    if report is None:
        return 1
    if args.json:
        print(report.model_dump_json())
        return 0
    r = report.render
    print(report.resume_line())
    print(f"build-kinematicparts20k: {r.accepted_assets} assets rendered, {r.samples_written} new samples, "
          f"{report.already_decided} already done, {sum(report.rejection_reasons.values())} rejections")
    print(f"Table: {report.lance_uri}/samples.lance (version {report.versions['samples']})")
    print("Read it:\n    " + read_snippet(report.lance_uri, report.versions["samples"]).replace("\n", "\n    "))
    if report.contact_sheet:
        print(f"Contact sheet: {report.contact_sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flows.fit4d_cli import add_fit4d_commands  # fit4d
    from flows.lift_cli import add_lift_commands  # rig / lift
    from flows.training_cli import add_training_commands  # train / evaluate

    return pipeline_cli.build_parser(
        register=[add_flow_commands, add_training_commands, add_lift_commands, add_fit4d_commands]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return pipeline_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
