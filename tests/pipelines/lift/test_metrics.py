"""Joint distances as MagicArticulate's utils/eval_utils.py (modified from RigNet) computes them, on
cases worked out by hand; the other helpers on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.lift.animate import apply, kabsch
from pipelines.lift.metrics import BONE_STEP, chamfer, sample_bones, skeleton_distances, unit_box


def test_chamfer_is_the_mean_of_the_two_one_way_means() -> None:
    a = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    b = np.array([[0.0, 0, 0]])
    # a -> b: (0 + 1) / 2; b -> a: 0; halved
    assert chamfer(a, b) == pytest.approx(0.25)


def test_bones_are_sampled_every_step_from_parent_to_child() -> None:
    joints = np.array([[0.0, 0, 0], [0.1, 0, 0]])
    samples = sample_bones(joints, np.array([-1, 0]))
    assert len(samples) == round(0.1 / BONE_STEP) + 1
    np.testing.assert_allclose(samples[[0, -1]], joints)
    np.testing.assert_allclose(np.diff(samples[:, 0]), BONE_STEP)


def test_a_missing_middle_joint_costs_in_j2j_but_not_along_the_bones() -> None:
    predicted = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    true = np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0]])
    j2j, j2b, b2b = skeleton_distances(predicted, np.array([-1, 0]), true, np.array([-1, 0, 1]))
    assert j2j == pytest.approx((0.0 + 0.5 / 3) / 2)  # predicted -> true: 0; true -> predicted: 0, 0.5, 0
    assert j2b == pytest.approx(0.0, abs=1e-9)  # every joint lies on the other skeleton's bones
    assert b2b == pytest.approx(0.0, abs=BONE_STEP)


def test_a_shifted_skeleton_is_off_by_the_shift_in_all_three() -> None:
    joints = np.array([[0.0, 0, 0], [0.0, 0, 0.8], [0.3, 0, 0.8]])
    parents = np.array([-1, 0, 1])
    distances = skeleton_distances(joints + [0, 0.1, 0], parents, joints, parents)
    np.testing.assert_allclose(distances, 0.1, atol=1e-9)


def test_unit_box_puts_the_longest_side_on_minus_one_to_one() -> None:
    points = np.array([[1.0, 2, 3], [3.0, 3, 3], [2.0, 2.5, 4]])
    centre, scale = unit_box(points)
    normalised = (points - centre) * scale
    assert normalised[:, 0].min() == -1 and normalised[:, 0].max() == 1
    assert np.abs(normalised).max() == 1


def test_kabsch_recovers_a_rigid_motion() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(20, 3))
    angle = 0.7
    motion = np.eye(4)
    motion[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    motion[:3, 3] = [0.3, -0.2, 1.0]
    np.testing.assert_allclose(kabsch(points, apply(motion, points)), motion, atol=1e-9)
