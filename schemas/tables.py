"""Arrow schemas derived from the pydantic records, and conversions both ways.

One source of truth: a field's Python annotation decides its Arrow type. ``dict`` fields become JSON
strings (queryable from DuckDB, Polars or pandas), ``bytes`` fields marked ``{"blob": True}`` become
Lance blob columns, nested models become structs.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Iterable, TypeVar

import pyarrow as pa
from pydantic import BaseModel, Field

from schemas.assets import AssetRef, ProbeReport, Rejection, utcnow
from schemas.lift import RigRow
from schemas.parts import PartDecision
from schemas.samples import Sample

M = TypeVar("M", bound=BaseModel)

BLOB_METADATA = {b"lance-encoding:blob": b"true"}


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unions other than Optional are not supported: {annotation}")
        return args[0], True
    return annotation, False


def arrow_type(annotation: Any) -> pa.DataType:
    annotation, _ = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return pa.string()
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(annotation)
        return pa.list_(arrow_type(item))
    if origin is dict or annotation is dict:
        return pa.string()  # JSON
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return pa.struct([arrow_field(n, f) for n, f in annotation.model_fields.items()])
        if issubclass(annotation, Enum) or annotation is str:
            return pa.string()
        if annotation is bool:
            return pa.bool_()
        if annotation is int:
            return pa.int64()
        if annotation is float:
            return pa.float64()
        if annotation is bytes:
            return pa.large_binary()
        if annotation is datetime:
            return pa.timestamp("us", tz="UTC")
    if annotation is Any:
        return pa.string()  # JSON
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_field(name: str, field: Any) -> pa.Field:
    _, nullable = _strip_optional(field.annotation)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    metadata = BLOB_METADATA if extra.get("blob") else None
    return pa.field(name, arrow_type(field.annotation), nullable=nullable, metadata=metadata)


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    return pa.schema([arrow_field(n, f) for n, f in model.model_fields.items()])


def _to_arrow_value(annotation: Any, value: Any) -> Any:
    annotation, _ = _strip_optional(annotation)
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin is dict or annotation is dict or annotation is Any:
        return json.dumps(value)  # key order kept: bone_to_part lists bones depth-first
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(annotation)
        return [_to_arrow_value(item, v) for v in value]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {n: _to_arrow_value(f.annotation, getattr(value, n)) for n, f in annotation.model_fields.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime) and value.tzinfo is None:
        # Arrow would store a naive time as if it were UTC and read it back aware: shifted and unequal.
        raise ValueError(
            f"naive datetime {value.isoformat()}: records carry timezone-aware times (schemas.assets.utcnow)"
        )
    return value


def _from_arrow_value(annotation: Any, value: Any) -> Any:
    annotation, _ = _strip_optional(annotation)
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin is dict or annotation is dict or annotation is Any:
        return json.loads(value)
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(annotation)
        return [_from_arrow_value(item, v) for v in value]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {n: _from_arrow_value(f.annotation, value.get(n)) for n, f in annotation.model_fields.items()}
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)  # pyarrow returns ZoneInfo("UTC"); records use timezone.utc
    return value


def to_row(record: BaseModel) -> dict[str, Any]:
    return {n: _to_arrow_value(f.annotation, getattr(record, n)) for n, f in type(record).model_fields.items()}


def to_table(records: Iterable[BaseModel], model: type[BaseModel]) -> pa.Table:
    rows = [to_row(r) for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(model))


def from_row(model: type[M], row: dict[str, Any]) -> M:
    data = {n: _from_arrow_value(f.annotation, row.get(n)) for n, f in model.model_fields.items() if n in row}
    return model.model_validate(data)


def from_table(model: type[M], table: pa.Table) -> list[M]:
    return [from_row(model, r) for r in table.to_pylist()]


class AssetRow(BaseModel):
    """One row of the ``assets`` table: an asset seen by a build and what its probe found."""

    asset: AssetRef
    probe: ProbeReport
    config_hash: str = ""
    code_version: str = ""


class ProbeRow(BaseModel):
    """One row of the ``probes`` table: what Blender found in an asset's bytes under one version of the
    probe code; reused by every render configuration (``pipelines.version.probe_version``)."""

    sha256: str
    probe_version: str
    probe: ProbeReport
    created_at: datetime = Field(default_factory=utcnow)


SAMPLES_SCHEMA = arrow_schema(Sample)
ASSETS_SCHEMA = arrow_schema(AssetRow)
REJECTIONS_SCHEMA = arrow_schema(Rejection)
PARTS_SCHEMA = arrow_schema(PartDecision)
RIGS_SCHEMA = arrow_schema(RigRow)
PROBES_SCHEMA = arrow_schema(ProbeRow)
