"""4D fitting: held-out views and frames of ground-truth samples, beside the trivial baseline.

    .venv/bin/python benchmarks/fit4d.py [--assets arm rigid CesiumMan] [--views 8 --frames 5 --resolution 64]
                                         [--steps 300 --gaussians 1500] [--lpips lpips.pt] [--json out.json]

Each asset (a procedural kind, or the stem of a shared glTF in ../shared/assets/gltf; first clip) is
rendered with Blender on an orbit of ``--views`` views x ``--frames`` frames. The fit sees the views
and frames not held out (default: views 3 and 7, frames 1 and 3) and is scored on the held-out cells:
novel views at trained frames, trained views at novel frames, and both. Beside it, the baseline: the
true image of the nearest trained view at the nearest trained frame (pipelines.fit4d.scoring). PSNR,
SSIM and part mIoU / foreground part accuracy (rendered part maps decoded with the palette); LPIPS only
with a local TorchScript LPIPS (``--lpips``), else "not computed". Then the fit time per sample, and
the same fit's time at 1 and 2 PyTorch threads (``--threads-steps`` steps each, interleaved).
Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.build.blender.probe import probe_asset  # noqa: E402
from pipelines.build.blender.render import render_grid as blender_grid  # noqa: E402
from pipelines.build.blender.session import BlenderSession  # noqa: E402
from pipelines.build.content import file_sha256  # noqa: E402
from pipelines.build.sources.procedural import KINDS, generate_asset  # noqa: E402
from pipelines.evaluate.learned_metrics import load_scripted  # noqa: E402
from pipelines.fit4d.asset import render_grid  # noqa: E402
from pipelines.fit4d.fit import fit  # noqa: E402
from pipelines.fit4d.scoring import held_out_cells, nearest_frame, nearest_view, score  # noqa: E402
from pipelines.fit4d.target import FitTarget, from_grid  # noqa: E402
from schemas.fit4d import FitConfig  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402

SHARED = REPO.parent / "shared" / "assets" / "gltf"


def asset_path(name: str, folder: Path) -> Path | None:
    if name in KINDS:
        return Path(generate_asset(name, 0, folder).local_path)
    found = sorted(SHARED.glob(f"{name}.gl*")) if SHARED.is_dir() else []
    return found[0] if found else None


def render_target(session: BlenderSession, path: Path, spec: RenderSpec) -> FitTarget:
    report = probe_asset(session, path, file_sha256(path))
    if not report.ok or not report.clips:
        raise RuntimeError(f"{path}: {report.reason}: {report.detail}")
    clip = report.clips[0].name
    session.load(path)
    return from_grid(blender_grid(session, clip, spec, seed=0), spec, f"{path.stem}:{clip}")


def lpips_pair(net, target: FitTarget, model, views: list[int], frames: list[int]) -> dict[str, dict[str, float]]:
    """LPIPS of the fit and of the baseline, per kind of held-out cell."""
    renders = render_grid(model, target.cameras, target.frame_times, target.palette)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        to = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # noqa: E731
        return float(net(to(a), to(b)).reshape(-1)[0])

    out = {}
    truth = (target.rgb * 255).round().astype(np.uint8)
    for kind, cells in held_out_cells(target, views, frames).items():
        if cells:
            out[kind] = {
                "fit": float(np.mean([distance(renders.rgb[v, f], truth[v, f]) for v, f in cells])),
                "baseline": float(np.mean([distance(truth[nearest_view(target, v, views), nearest_frame(target, f, frames)],
                                                    truth[v, f]) for v, f in cells])),
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", nargs="+", default=["arm", "rigid", "CesiumMan"])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--held-views", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--held-frames", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--steps", type=int, default=FitConfig().steps)
    parser.add_argument("--gaussians", type=int, default=FitConfig().n_gaussians)
    parser.add_argument("--threads-steps", type=int, default=60, help="steps of the 1-vs-2-thread timing (0: skip)")
    parser.add_argument("--lpips", help="TorchScript LPIPS network (local weights)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    spec = RenderSpec(n_views=args.views, n_frames=args.frames, resolution=args.resolution, samples=8, threads=2,
                      motion_threshold=0.05)
    views = [v for v in range(args.views) if v not in args.held_views]
    frames = [f for f in range(args.frames) if f not in args.held_frames]
    config = FitConfig(steps=args.steps, n_gaussians=args.gaussians, train_views=views, train_frames=frames)
    lpips = load_scripted(args.lpips, "LPIPS")
    summary: dict = {"config": config.model_dump(), "render": spec.model_dump(mode="json"), "torch": torch.__version__,
                     "lpips": lpips if isinstance(lpips, str) else args.lpips, "gpu": "not measured: no GPU lent",
                     "assets": {}}
    print(f"fit: {args.steps} steps, {args.gaussians} primitives, {len(views)}/{args.views} views, "
          f"{len(frames)}/{args.frames} frames, {args.resolution} px; LPIPS: {summary['lpips']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, BlenderSession(threads=2) as session:
        targets = {}
        for name in args.assets:
            path = asset_path(name, Path(tmp))
            if path is None:
                print(f"{name}: skipped (not a procedural kind, and not in {SHARED})")
                continue
            targets[name] = render_target(session, path, spec)
    for name, target in targets.items():
        result = fit(target, config)
        report = score(result.model, target, result.train_views, result.train_frames)
        if not isinstance(lpips, str):
            for kind, pair in lpips_pair(lpips, target, result.model, views, frames).items():
                report[kind]["fit"]["lpips"], report[kind]["baseline"]["lpips"] = pair["fit"], pair["baseline"]
        summary["assets"][name] = {"source": target.source, "parts": target.part_map.n_parts,
                                   "frame_times": target.frame_times, "fit_seconds": result.seconds, "held_out": report}
        print(f"{target.source}: {target.part_map.n_parts} parts, fit {result.seconds:.1f} s", flush=True)
        for kind, scores in report.items():
            fit_s, base = scores["fit"], scores["baseline"]
            print(f"  {kind:11s} ({scores['cells']:2d} cells)  PSNR {fit_s['psnr']:6.2f} vs {base['psnr']:6.2f} dB  "
                  f"SSIM {fit_s['ssim']:.3f} vs {base['ssim']:.3f}  part mIoU {fit_s['part_miou']:.3f} vs "
                  f"{base['part_miou']:.3f}  part acc {fit_s['part_accuracy']:.3f} vs {base['part_accuracy']:.3f}"
                  + (f"  LPIPS {fit_s['lpips']:.3f} vs {base['lpips']:.3f}" if "lpips" in fit_s else ""), flush=True)
    if args.threads_steps and targets:
        name, target = next(iter(targets.items()))
        timing = {1: [], 2: []}
        for _ in range(2):
            for threads in (1, 2):
                started = time.perf_counter()
                fit(target, config.model_copy(update={"steps": args.threads_steps, "threads": threads}))
                timing[threads].append(time.perf_counter() - started)
        best = {t: min(v) for t, v in timing.items()}
        summary["threads"] = {"asset": name, "steps": args.threads_steps, "seconds_best_of_2": best,
                              "two_over_one": best[2] / best[1]}
        print(f"threads ({name}, {args.threads_steps} steps, best of 2): 1 thread {best[1]:.1f} s, "
              f"2 threads {best[2]:.1f} s: 2/1 = {best[2] / best[1]:.2f}", flush=True)
    print(json.dumps(summary, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
