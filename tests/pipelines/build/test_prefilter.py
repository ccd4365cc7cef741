"""Prefilter on annotations alone: one reason per refused asset, one kept copy per sha256."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from pipelines.build.prefilter import prefilter
from schemas.assets import AssetRef, RejectReason
from schemas.prefilter import PrefilterRules


def sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def ref(identifier: str, source: str = "github", licence: str | None = "MIT", file_type: str = "glb",
        content: str | None = None) -> AssetRef:
    return AssetRef(file_identifier=identifier, source=source, license=licence, file_type=file_type,
                    sha256=sha(content or identifier))


def outcome(assets: list[AssetRef], rules: PrefilterRules | None = None) -> tuple[list[str], dict[str, RejectReason]]:
    accepted, rejections = prefilter(assets, rules)
    return [a.file_identifier for a in accepted], {r.file_identifier: r.reason for r in rejections}


def test_each_rule_names_its_own_reason():
    assets = [
        ref("rig.glb"),
        ref("rig.fbx", file_type="fbx"),
        ref("mesh.stl", file_type="stl"),
        ref("scan.obj", file_type="obj"),
        ref("scene.dae", file_type="dae"),
        ref("nc.glb", licence="by-nc"),
        ref("null.glb", licence=None),
        ref("garbled.glb", licence="CC-BY except when not"),
        ref("thing.glb", source="thingiverse", licence="Creative Commons - Attribution"),
        ref("bad-sha.glb"),
    ]
    assets[-1] = assets[-1].model_copy(update={"sha256": "../../etc/passwd"})
    accepted, reasons = outcome(assets, PrefilterRules(sources=["github"]))
    assert accepted == ["rig.glb", "rig.fbx"]
    assert reasons == {
        "mesh.stl": RejectReason.unsupported_file_type,
        "scan.obj": RejectReason.unsupported_file_type,
        "scene.dae": RejectReason.no_blender_importer,
        "nc.glb": RejectReason.licence_not_allowed,
        "null.glb": RejectReason.unknown_licence,
        "garbled.glb": RejectReason.unknown_licence,
        "thing.glb": RejectReason.source_not_requested,
        "bad-sha.glb": RejectReason.bad_annotation,
    }


def test_rejections_carry_provenance_and_the_rules_hash():
    rules = PrefilterRules()
    _, rejections = prefilter([ref("nc.glb", licence="by-nc")], rules)
    (rejection,) = rejections
    assert (rejection.sha256, rejection.source, rejection.stage) == (sha("nc.glb"), "github", "prefilter")
    assert rejection.config_hash == rules.config_hash() and rejection.code_version
    assert "CC-BY-NC-4.0" in rejection.detail


def test_accepted_licences_become_spdx_and_keep_the_raw_string():
    (accepted,), _ = prefilter([ref("a.glb", source="sketchfab", licence="by")])
    assert accepted.license == "CC-BY-4.0" and accepted.metadata["license_raw"] == "by"
    (same,), _ = prefilter([ref("b.glb", licence="MIT")])
    assert same.license == "MIT" and "license_raw" not in same.metadata


def test_duplicates_keep_one_copy_whatever_the_input_order():
    copies = [
        ref("https://github.com/b/r/blob/x/fox.glb", content="fox"),
        ref("https://github.com/a/r/blob/x/fox.glb", content="fox"),
        ref("https://sketchfab.com/3d-models/fox", source="sketchfab", licence="cc0", content="fox"),
        ref("other.glb"),
    ]
    for order in itertools.permutations(copies):
        accepted, reasons = outcome(list(order))
        assert sorted(accepted) == ["https://github.com/a/r/blob/x/fox.glb", "other.glb"]
        assert reasons == {
            "https://github.com/b/r/blob/x/fox.glb": RejectReason.duplicate,
            "https://sketchfab.com/3d-models/fox": RejectReason.duplicate,
        }


def test_kept_copy_lists_the_other_places_of_its_bytes_in_preference_order():
    copies = [ref("z.glb", source="sketchfab", content="fox"), ref("b.glb", content="fox"), ref("a.glb", content="fox")]
    (kept,), _ = prefilter(copies)
    assert kept.file_identifier == "a.glb"
    assert kept.metadata["duplicate_copies"] == [
        {"fileIdentifier": "b.glb", "source": "github"}, {"fileIdentifier": "z.glb", "source": "sketchfab"}]


def test_identical_rows_keep_exactly_one_and_list_no_copies():
    injected = ref("a.glb").model_copy(update={"metadata": {"duplicate_copies": [{"fileIdentifier": "evil", "source": "x"}]}})
    accepted, rejections = prefilter([injected, ref("a.glb"), ref("a.glb")])
    assert len(accepted) == 1 and [r.reason for r in rejections] == [RejectReason.duplicate] * 2
    assert "duplicate_copies" not in accepted[0].metadata  # an annotation cannot smuggle places in


def test_a_refused_copy_does_not_shadow_an_allowed_one():
    accepted, reasons = outcome([ref("a-nc.glb", licence="by-nc", content="fox"), ref("b-mit.glb", content="fox")])
    assert accepted == ["b-mit.glb"] and reasons == {"a-nc.glb": RejectReason.licence_not_allowed}


def test_dedupe_can_be_turned_off():
    accepted, _ = outcome([ref("a.glb", content="x"), ref("b.glb", content="x")], PrefilterRules(dedupe=False))
    assert accepted == ["a.glb", "b.glb"]


def test_procedural_is_cc0_and_local_without_licence_follows_the_flag():
    assets = [ref("gen-0", source="procedural", licence=None), ref("mine.fbx", source="local", licence=None, file_type="fbx"),
              ref("theirs.glb", source="local", licence="by-nc")]
    accepted, rejections = prefilter(assets)
    assert [(a.file_identifier, a.license) for a in accepted] == [("gen-0", "CC0-1.0"), ("mine.fbx", None)]
    assert [r.reason for r in rejections] == [RejectReason.licence_not_allowed]
    _, strict = outcome(assets, PrefilterRules(allow_unlicensed_local=False))
    assert strict == {"mine.fbx": RejectReason.unknown_licence, "theirs.glb": RejectReason.licence_not_allowed}


def test_every_asset_is_accounted_for_exactly_once():
    assets = [ref(f"a{i}.glb", licence=["MIT", "by-nc", None][i % 3], file_type=["glb", "stl"][i % 2],
                  content=f"c{i % 7}") for i in range(60)]
    accepted, rejections = prefilter(assets)
    ids = [a.file_identifier for a in accepted] + [r.file_identifier for r in rejections]
    assert sorted(ids) == sorted(a.file_identifier for a in assets)
    assert len({a.sha256 for a in accepted}) == len(accepted)


def test_rules_hash_ignores_list_order_and_case():
    one = PrefilterRules(file_types=["GLB", "fbx"], licences=["MIT", "CC0-1.0"], sources=["sketchfab", "github"])
    two = PrefilterRules(file_types=[".fbx", "glb"], licences=["CC0-1.0", "MIT"], sources=["github", "sketchfab"])
    assert one.config_hash() == two.config_hash() != PrefilterRules().config_hash()


def test_unknown_licence_id_in_rules_is_refused():
    with pytest.raises(ValueError, match="CC-BY-4"):
        prefilter([ref("a.glb")], PrefilterRules(licences=["CC-BY-4"]))


def test_collada_is_refused_with_its_own_reason_and_cannot_be_requested():
    accepted, rejections = prefilter([ref("scene.dae", source="local", licence=None, file_type="dae"), ref("rig.glb")])
    assert [a.file_identifier for a in accepted] == ["rig.glb"]
    (rejection,) = rejections
    assert (rejection.reason, rejection.stage) == (RejectReason.no_blender_importer, "prefilter")
    assert "Collada" in rejection.detail
    assert "dae" not in PrefilterRules().file_types
    with pytest.raises(ValueError, match="Collada"):
        PrefilterRules(file_types=["glb", ".DAE"])
