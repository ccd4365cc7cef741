"""The Arrow schemas derived from the records: complete, typed as documented, and lossless both ways."""

from __future__ import annotations

import types
import typing
from datetime import datetime, timedelta, timezone
from enum import Enum

import lance
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from schemas.assets import (
    AssetRef,
    BoneInfo,
    ClipInfo,
    ProbeReport,
    Rejection,
    RejectReason,
)
from schemas.parts import PartDecision, PartMap, part_decision_key
from schemas.render import Camera, RenderSpec
from schemas.samples import Sample, sample_key
from schemas.tables import (
    ASSETS_SCHEMA,
    BLOB_METADATA,
    PARTS_SCHEMA,
    REJECTIONS_SCHEMA,
    SAMPLES_SCHEMA,
    AssetRow,
    arrow_schema,
    from_row,
    from_table,
    to_row,
    to_table,
)

TABLES = [
    (Sample, SAMPLES_SCHEMA),
    (AssetRow, ASSETS_SCHEMA),
    (Rejection, REJECTIONS_SCHEMA),
    (PartDecision, PARTS_SCHEMA),
]
WHEN = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)


# --- records with every field set away from its default -------------------------------------------------


def asset_row() -> AssetRow:
    asset = AssetRef(
        fileIdentifier="https://github.com/o/r/blob/abc/figure é.glb",
        source="github",
        license="CC-BY-4.0",
        fileType="glb",
        sha256="a" * 64,
        metadata={"stars": 12, "tags": ["rig", None], "nested": {"z": 1.5, "a": True}},
        local_path="/cache/aa/aaaa.glb",
    )
    probe = ProbeReport(
        sha256="a" * 64,
        ok=False,
        reason=RejectReason.timeout,
        detail="probe took 61 s",
        n_armatures=1,
        bones=[
            BoneInfo(name="root", head=[0.0, 0.0, 0.0], tail=[0.0, 0.1, 0.0]),
            BoneInfo(name="arm", parent="root", head=[0.0, 0.1, 0.0], tail=[0.25, 0.1, -1e-9]),
        ],
        n_meshes=2,
        n_skinned_meshes=1,
        n_rigid_children=1,
        n_vertices=1234,
        n_faces=2460,
        clips=[ClipInfo(name="walk", frame_start=1, frame_end=48, fps=29.97, motion=0.123456789)],
        max_weight_sum_error=1e-7,
        n_unweighted_vertices=3,
        has_nan=True,
        duplicate_bone_names=True,
        bounds_min=[-1.5, -0.25, 0.0],
        bounds_max=[1.5, 2.75, 0.5],
        seconds=0.42,
    )
    return AssetRow(asset=asset, probe=probe, config_hash="cfg0123456789abc", code_version="0.1.0+abcdef012345")


def rejection() -> Rejection:
    return Rejection(
        sha256="b" * 64,
        file_identifier="local/rigs/chain.glb",
        source="local",
        stage="filter",
        reason=RejectReason.too_many_bones,
        detail="3 bones > max_bones 2",
        clip="swing",
        config_hash="cfg",
        code_version="v1",
        created_at=WHEN,
        rules_hash="filters0123abcd",
    )


def sample() -> Sample:
    spec = RenderSpec(n_views=2, n_frames=2, resolution=16)
    cameras = [
        Camera(
            view=v,
            azimuth_deg=180.0 * v,
            elevation_deg=10.0,
            distance=2.2,
            fov_deg=40.0,
            width=16,
            height=16,
            intrinsics=[[21.97, 0.0, 8.0], [0.0, 21.97, 8.0], [0.0, 0.0, 1.0]],
            extrinsics=[[1.0, 0.0, 0.0, 0.1], [0.0, -1.0, 0.0, 0.2], [0.0, 0.0, -1.0, 2.2], [0.0, 0.0, 0.0, 1.0]],
        )
        for v in range(2)
    ]
    part_map = PartMap(
        bone_to_part={"root": 0, "arm": 1, "hand": 1},
        part_names=["root", "arm"],
        palette=[[40, 128, 215], [200, 60, 90]],
        centroids=[[0.5, 0.5, 0.1], [0.9, 0.4, 0.6]],
        reference_pose="rest",
        reference_scale=0.5,
        reference_offset=[0.25, -1.0, 0.0],
        motion_frames=[1.0, 2.0, 3.5],
        bone_motion=[0.0, 0.25, 0.125],
    )
    return Sample(
        sample_id=sample_key("c" * 64, "walk", spec.config_hash()),
        sha256="c" * 64,
        file_identifier="procedural/arm/0",
        source="procedural",
        license="CC0-1.0",
        clip="walk",
        fps=24.0,
        frame_times=[1.0, 12.5],
        n_views=2,
        n_frames=2,
        height=16,
        width=16,
        cameras=cameras,
        part_map=part_map,
        part_decision_id=part_decision_key("c" * 64, "walk", spec.part_rules_hash(), "v1"),
        normalisation_scale=0.731,
        normalisation_offset=[-0.1, 0.2, -0.3],
        rgb=bytes(range(256)) * 3,
        parts=b"\x00PK\x03\x04parts",
        alpha=b"",
        render_config=spec.model_dump_json(),
        config_hash=spec.config_hash(),
        code_version="v1",
        probe_seconds=1.25,
        render_seconds=3.5,
        created_at=WHEN,
    )


def part_decision() -> PartDecision:
    record = sample()
    rules_hash = RenderSpec.model_validate_json(record.render_config).part_rules_hash()
    return PartDecision(
        decision_id=part_decision_key(record.sha256, record.clip, rules_hash, record.code_version),
        sha256=record.sha256,
        clip=record.clip,
        rules_hash=rules_hash,
        code_version=record.code_version,
        part_map=record.part_map,
        created_at=WHEN,
    )


RECORDS = [(Sample, sample), (AssetRow, asset_row), (Rejection, rejection), (PartDecision, part_decision)]


def test_fixture_records_set_every_field_away_from_its_default():
    """Otherwise a column silently dropped on the way back would still compare equal."""
    for model, make in RECORDS:
        record = make()
        for name, field in model.model_fields.items():
            if not field.is_required():
                assert getattr(record, name) != field.get_default(call_default_factory=True), (
                    f"{model.__name__}.{name}: give it a non-default value in this file's fixture record"
                )


# --- the derivation --------------------------------------------------------------------------------------

# The documented mapping, written out independently of schemas.tables.
LEAF_TYPES = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.large_binary(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def check_field(where: str, annotation, field: pa.Field) -> None:
    """Assert that an Arrow field is what the documented mapping gives for a Python annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        assert field.nullable, f"{where}: Optional field must be nullable"
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        assert pa.types.is_list(field.type), where
        check_field(where + "[]", typing.get_args(annotation)[0], field.type.value_field)
    elif origin is dict or annotation is dict or origin is typing.Literal:
        assert field.type == pa.string(), f"{where}: dicts and literals are JSON / plain strings"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        check_model(where, annotation, field.type)
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        assert field.type == pa.string(), where
    else:
        assert field.type == LEAF_TYPES[annotation], f"{where}: {field.type}"


def check_model(where: str, model: type[BaseModel], struct: pa.StructType | pa.Schema) -> None:
    fields = list(struct) if isinstance(struct, pa.Schema) else [struct.field(i) for i in range(struct.num_fields)]
    assert [f.name for f in fields] == list(model.model_fields), f"{where}: columns differ from the model's fields"
    for field, (name, info) in zip(fields, model.model_fields.items(), strict=True):
        optional = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
        assert field.nullable == optional, f"{where}.{name}: nullable only when Optional"
        check_field(f"{where}.{name}", info.annotation, field)


@pytest.mark.parametrize("model, schema", TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_field_of_every_nested_record_has_its_column(model, schema):
    check_model(model.__name__, model, schema)
    # The module-level schemas are the derivation itself, not a copy that could go stale.
    assert schema.equals(arrow_schema(model), check_metadata=True)


def test_a_field_added_to_a_record_appears_in_its_schema():
    class NewPartMap(PartMap):
        symmetry: list[int] = Field(default_factory=list)

    class NewSample(Sample):
        part_map: NewPartMap
        depth: bytes | None = Field(None, json_schema_extra={"blob": True})
        quality: float = 0.0

    schema = arrow_schema(NewSample)
    check_model("NewSample", NewSample, schema)
    assert schema.names[-2:] == ["depth", "quality"]
    assert schema.field("part_map").type.field("symmetry").type == pa.list_(pa.int64())
    assert schema.field("depth").metadata == BLOB_METADATA and schema.field("depth").nullable


def test_blob_metadata_is_on_exactly_the_bytes_fields_of_sample():
    blob_fields = {name for name, f in Sample.model_fields.items() if f.annotation is bytes}
    assert blob_fields == {"rgb", "parts", "alpha"}
    for field in SAMPLES_SCHEMA:
        if field.name in blob_fields:
            assert field.type == pa.large_binary() and field.metadata == BLOB_METADATA, field.name
        else:
            assert not field.metadata, field.name


def test_unsupported_annotations_fail_loudly():
    class Ambiguous(BaseModel):
        value: int | str

    class Unknown(BaseModel):
        value: complex

    with pytest.raises(TypeError, match="unions"):
        arrow_schema(Ambiguous)
    with pytest.raises(TypeError, match="no Arrow type"):
        arrow_schema(Unknown)


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, make", RECORDS, ids=lambda x: getattr(x, "__name__", ""))
def test_records_round_trip_through_arrow_without_drift(model, make):
    record = make()
    table = to_table([record, record.model_copy(update={"code_version": "other"})], model)
    assert table.schema.equals(arrow_schema(model), check_metadata=True)
    back = from_table(model, table)
    assert back[0] == record
    assert back[1].code_version == "other"
    assert repr(back[0]) == repr(record)  # same types too: no int for float, no list for tuple, same tzinfo


@pytest.mark.parametrize("model, make", RECORDS, ids=lambda x: getattr(x, "__name__", ""))
def test_records_round_trip_through_arrow_ipc_bytes(model, make):
    record = make()
    sink = pa.BufferOutputStream()
    table = to_table([record], model)
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    read = pa.ipc.open_file(sink.getvalue()).read_all()
    assert read.schema.equals(table.schema, check_metadata=True)
    assert from_table(model, read) == [record]


@pytest.mark.parametrize(
    "model, make",
    [(AssetRow, asset_row), (Rejection, rejection), (PartDecision, part_decision)],
    ids=["assets", "rejections", "parts"],
)
def test_plain_tables_round_trip_through_lance(tmp_path, model, make):
    record = make()
    dataset = lance.write_dataset(to_table([record], model), tmp_path / "table.lance")
    assert from_table(model, dataset.to_table()) == [record]


def test_samples_round_trip_through_lance_with_blob_columns(tmp_path):
    record = sample()
    dataset = lance.write_dataset(to_table([record], Sample), tmp_path / "samples.lance")
    blob_names = ["rgb", "parts", "alpha"]
    # Lance stores the blob columns out of line: a plain scan returns descriptors, not the bytes.
    scanned = dataset.to_table()
    for name in blob_names:
        assert not pa.types.is_binary(scanned.schema.field(name).type)
        assert not pa.types.is_large_binary(scanned.schema.field(name).type)
    row = dataset.to_table(columns=[n for n in SAMPLES_SCHEMA.names if n not in blob_names]).to_pylist()[0]
    for name in blob_names:
        ((_, payload),) = dataset.read_blobs(name, indices=[0])
        row[name] = payload
    assert from_row(Sample, row) == record


def test_nulls_round_trip():
    row = asset_row()
    row.asset.license = None
    row.asset.local_path = None
    row.probe.reason = None
    back = from_table(AssetRow, to_table([row], AssetRow))[0]
    assert back == row
    assert back.asset.license is None and back.probe.reason is None and back.probe.bones[0].parent is None


def test_json_columns_are_plain_json_in_the_records_key_order():
    row = to_row(asset_row())
    assert row["asset"]["metadata"] == '{"stars": 12, "tags": ["rig", null], "nested": {"z": 1.5, "a": true}}'
    bone_to_part = from_row(Sample, to_row(sample())).part_map.bone_to_part
    assert list(bone_to_part) == ["root", "arm", "hand"]  # depth-first, as the parts stage wrote it


def test_times_keep_their_instant_and_come_back_in_utc():
    local = WHEN.astimezone(timezone(timedelta(hours=-7)))
    back = from_table(Rejection, to_table([rejection().model_copy(update={"created_at": local})], Rejection))[0]
    assert back.created_at == WHEN and back.created_at.utcoffset() == timedelta(0)


def test_naive_times_are_refused_rather_than_shifted():
    naive = rejection().model_copy(update={"created_at": datetime(2025, 3, 4, 5, 6, 7)})
    with pytest.raises(ValueError, match="naive datetime"):
        to_table([naive], Rejection)
