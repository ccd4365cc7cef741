"""The lift on real renders of procedural rigs (bpy, 64 px): skeleton trees, weights, unseen parts."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.lift.mesh import Mesh
from pipelines.lift.metrics import rig_metrics
from pipelines.lift.rig import lift
from pipelines.lift.skinning import rigid_weights
from pipelines.lift.views import PartViews

MAX_EDGE_JUMP = 0.5  # harmonic weights change by less than this across any edge (rigid ones by 1)


def tree_edges(parents) -> set[frozenset]:
    return {frozenset((int(c), int(p))) for c, p in enumerate(parents) if p >= 0}


def lifted_tree(rig) -> set[frozenset]:
    lead = [parts[0] for parts in rig.skeleton.bone_parts]
    return {frozenset((lead[b], lead[p])) for b, p in enumerate(rig.skeleton.parents) if p >= 0}


@pytest.mark.parametrize("kind, seed", [("arm", 0), ("biped", 0)])
def test_skeleton_has_one_joint_per_part_and_the_true_tree(procedural, lifted, kind: str, seed: int) -> None:
    views, truth = procedural(kind, seed)
    rig = lifted(kind, seed)
    assert len(rig.skeleton.joints) == views.n_parts == len(truth.joints)
    assert rig.skeleton.merged == [] and rig.summary().unseen_parts == []
    assert lifted_tree(rig) == tree_edges(truth.parents)
    parents = rig.skeleton.parents
    assert parents[0] == -1 and all(0 <= p < b for b, p in enumerate(parents) if b)  # one root, parents first


def test_harmonic_weights_sum_to_one_and_are_smooth(lifted) -> None:
    rig = lifted("biped", 0)
    a, b = rig.mesh.edges.T
    np.testing.assert_allclose(rig.weights.sum(axis=1), 1.0, atol=1e-9)
    assert rig.weights.min() >= 0 and (rig.weights > 0).sum(axis=1).max() <= 4
    assert np.abs(rig.weights[a] - rig.weights[b]).max() < MAX_EDGE_JUMP
    blended = ((rig.weights > 0.05) & (rig.weights < 0.95)).any(axis=1).mean()
    assert blended > 0.1  # weights do blend near the joints, they are not one-hot
    rigid = rigid_weights(rig.vertex_bone, len(rig.skeleton.joints))
    assert np.abs(rigid[a] - rigid[b]).max() == 1.0  # the bound means something: rigid skinning breaks it


def test_a_part_no_view_shows_is_reported_not_guessed(procedural) -> None:
    views, _ = procedural("biped", 0)
    hidden = views.part_names.index("head")
    ids = views.part_ids.copy()
    ids[ids == hidden] = views.part_names.index("spine_1")  # every view now draws the head as the chest
    rig = lift(PartViews(ids, views.cameras, views.part_names, views.frame_times, views.fps, clip=views.clip))
    assert rig.labels.unseen == [hidden]
    assert rig.summary().unseen_parts == ["head"]
    assert rig.skeleton.part_bone[hidden] == -1 and len(rig.skeleton.joints) == views.n_parts - 1
    assert not np.any(rig.labels.labels == hidden)


def test_lift_is_closer_to_the_true_chain_than_the_naive_baseline(procedural, lifted) -> None:
    truth = procedural("arm", 0)[1]
    ours, naive = rig_metrics(lifted("arm", 0), truth), rig_metrics(lifted("arm", 0, naive=True), truth)
    assert ours.miou > 0.8 and ours.miou == naive.miou  # same votes on the same mesh
    assert ours.cd_j2j < naive.cd_j2j  # joints at boundaries beat joints at centroids
    assert ours.skin_recall > naive.skin_recall and naive.skin_precision > ours.skin_precision
    assert ours.skin_l1 < naive.skin_l1


def test_a_given_mesh_is_rigged_instead_of_the_carved_one(procedural) -> None:
    views, truth = procedural("arm", 1)
    rig = lift(views, mesh=Mesh(truth.vertices, truth.faces))
    assert rig.mesh.vertices is truth.vertices and len(rig.skeleton.joints) == views.n_parts
    assert (rig.labels.labels == truth.vertex_part).mean() > 0.95  # votes on the true surface
    assert lifted_tree(rig) == tree_edges(truth.parents)
