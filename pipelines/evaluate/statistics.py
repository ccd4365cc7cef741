"""Estimates with their sample counts and bootstrap intervals over assets; differences of two runs.

Samples of one asset (its clips) are not independent, so the unit is the asset: an asset's value is
the mean over its samples, the estimate is the mean over assets (each asset weighs the same), and the
interval is the percentile bootstrap of that mean, resampling assets with replacement
(``resamples`` draws from a fixed seed, so a report is reproducible). Fewer than two assets give no
interval. Values that are not finite (PSNR of identical images, a part metric of an image without
foreground) are left out and the count says how many remained.

Two runs scored on the same items (:func:`difference`) are compared pairwise: the difference of
their estimates, its paired bootstrap interval (assets resampled together, so the shared difficulty
of an asset cancels), and whether the two runs' own intervals overlap (the cruder, common check).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
from pydantic import BaseModel

from pipelines.evaluate.learned_metrics import not_computed

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


class Estimate(BaseModel):
    value: float
    low: float | None = None  # the 95 % interval; None with fewer than two assets
    high: float | None = None
    n_samples: int
    n_assets: int


class Difference(BaseModel):
    """``value`` = this run minus the baseline, over the assets both scored."""

    value: float
    low: float | None = None
    high: float | None = None
    n_assets: int
    intervals_overlap: bool | None = None  # of the two runs' own intervals; None without both


def estimate(values: Sequence[float | None], assets: Sequence[str], name: str, resamples: int = RESAMPLES) -> Estimate | str:
    """Mean over assets of per-sample ``values`` (None, NaN and inf left out), with its interval."""
    if len(values) != len(assets):
        raise ValueError(f"{len(values)} values for {len(assets)} assets")
    kept = [(a, float(v)) for a, v in zip(assets, values) if v is not None and math.isfinite(v)]
    if not kept:
        if any(v is not None and math.isinf(v) for v in values):
            return not_computed(f"{name} is infinite for every sample: the images are identical")
        return not_computed(f"no sample has a value for {name}" if values else "no samples")
    per_asset = _asset_means(kept)
    means = np.array(list(per_asset.values()))
    low, high = _interval(means, resamples)
    return Estimate(value=float(means.mean()), low=low, high=high, n_samples=len(kept), n_assets=len(means))


def difference(
    values: Sequence[float | None],
    baseline: Sequence[float | None],
    assets: Sequence[str],
    own: Estimate | str,
    other: Estimate | str,
    resamples: int = RESAMPLES,
) -> Difference | str:
    """Paired difference of two runs' per-sample values on the same items (same order)."""
    if not (len(values) == len(baseline) == len(assets)):
        raise ValueError("the two runs must be scored on the same items")
    pairs = [
        (a, float(v) - float(b))
        for a, v, b in zip(assets, values, baseline)
        if v is not None and b is not None and math.isfinite(v) and math.isfinite(b)
    ]
    if not pairs:
        return not_computed("no item has a value in both runs")
    means = np.array(list(_asset_means(pairs).values()))
    low, high = _interval(means, resamples)
    overlap = None
    if isinstance(own, Estimate) and isinstance(other, Estimate) and own.low is not None and other.low is not None:
        overlap = own.low <= other.high and other.low <= own.high
    return Difference(value=float(means.mean()), low=low, high=high, n_assets=len(means), intervals_overlap=overlap)


def _asset_means(pairs: list[tuple[str, float]]) -> dict[str, float]:
    by_asset: dict[str, list[float]] = defaultdict(list)
    for asset, value in pairs:
        by_asset[asset].append(value)
    return {asset: float(np.mean(by_asset[asset])) for asset in sorted(by_asset)}


def _interval(means: np.ndarray, resamples: int) -> tuple[float | None, float | None]:
    if len(means) < 2:
        return None, None
    draws = np.random.default_rng(SEED).integers(0, len(means), size=(resamples, len(means)))
    boot = means[draws].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))
