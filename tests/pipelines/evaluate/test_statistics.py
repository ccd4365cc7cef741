"""Estimates over assets: counts, bootstrap intervals worked out by hand, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.evaluate.statistics import Estimate, difference, estimate


def test_samples_of_one_asset_are_averaged_before_assets_are():
    # Asset a: 1 and 3 (mean 2); asset b: 5. Mean over assets 3.5, not the mean over samples 3.
    result = estimate([1.0, 3.0, 5.0], ["a", "a", "b"], "miou")
    assert (result.value, result.n_samples, result.n_assets) == (3.5, 3, 2)
    # Two assets: a bootstrap draw is (2, 2), (2, 5), (5, 2) or (5, 5), means 2, 3.5, 3.5, 5 with
    # probabilities 1/4, 1/2, 1/4; the 2.5th and 97.5th percentiles of 2000 draws are 2 and 5.
    assert (result.low, result.high) == (2.0, 5.0)
    assert estimate([1.0, 3.0, 5.0], ["a", "a", "b"], "miou") == result  # a fixed seed: reproducible


def test_the_interval_matches_the_normal_approximation_on_many_assets():
    values = np.random.default_rng(0).normal(0.6, 0.1, 200)
    result = estimate(list(values), [f"asset{i}" for i in range(200)], "miou")
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(200)
    assert result.low < result.value < result.high
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.1)


def test_one_asset_has_no_interval_and_values_without_a_number_are_not_counted():
    result = estimate([0.5, math.nan, None], ["a", "a", "a"], "miou")
    assert result == Estimate(value=0.5, low=None, high=None, n_samples=1, n_assets=1)
    assert estimate([math.inf, math.inf], ["a", "b"], "psnr") == "not computed: psnr is infinite for every sample: the images are identical"
    assert estimate([None], ["a"], "miou") == "not computed: no sample has a value for miou"
    assert estimate([], [], "miou") == "not computed: no samples"
    with pytest.raises(ValueError, match="values for"):
        estimate([1.0], ["a", "b"], "miou")


def test_a_paired_difference_is_sharper_than_overlapping_intervals():
    # Assets differ a lot in difficulty, and run A beats run B by exactly 0.05 on every item.
    rng = np.random.default_rng(1)
    assets = [f"asset{i}" for i in range(20)]
    base = list(rng.uniform(0.2, 0.9, 20))
    better = [v + 0.05 for v in base]
    own, other = estimate(better, assets, "miou"), estimate(base, assets, "miou")
    result = difference(better, base, assets, own, other)
    assert result.value == pytest.approx(0.05) and result.low == pytest.approx(0.05) and result.high == pytest.approx(0.05)
    assert result.intervals_overlap is True  # the cruder check cannot tell them apart
    # Far apart: the intervals no longer overlap.
    far = [v + 1.0 for v in base]
    assert difference(far, base, assets, estimate(far, assets, "miou"), other).intervals_overlap is False


def test_a_difference_needs_items_with_values_in_both_runs():
    one = estimate([1.0], ["a"], "miou")
    assert difference([None], [1.0], ["a"], one, one) == "not computed: no item has a value in both runs"
    single = difference([1.0], [0.5], ["a"], one, one)
    assert single.value == 0.5 and single.low is None and single.intervals_overlap is None
