"""Parameters of the build flow, validated at the flow's door.

:class:`BuildParams` is the one place that says what a build may be asked to do. The flow validates
its arguments through it before any work starts, so a bad parameter fails the run at once with a
message naming the field. Nested records that tolerate unknown keys elsewhere (``RenderSpec``,
``FilterRules``) are checked strictly here: a misspelt key is an error, not a silent default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.fetch import FetchSettings
from schemas.filters import FilterRules
from schemas.prefilter import PrefilterRules
from schemas.render import RenderSpec

SourceKind = Literal["procedural", "local", "objaverse-xl"]
OBJAVERSE_SOURCES = ("github", "sketchfab", "smithsonian", "thingiverse")
# "auto" and "local" are Ray's own keywords; otherwise host:port of a GCS, or a Ray Client URL.
_RAY_ADDRESS = re.compile(r"(auto|local|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})")


class ParamsError(ValueError):
    """The build parameters are invalid; the message lists every field that is wrong and why."""


class SourceParams(BaseModel):
    """Where candidates come from.

    - ``procedural``: ``count`` seeded creatures written to ``folder`` (default ``<cache_dir>/procedural``);
    - ``local``: every rig file under ``folder``;
    - ``objaverse-xl``: the annotation tables under ``objaverse_dir`` (``~/.objaverse`` by default),
      restricted to ``objaverse_sources``; ``offline`` reads only tables already on disk.
    """

    model_config = ConfigDict(extra="forbid")

    kind: SourceKind = "procedural"
    count: int = Field(6, ge=1, le=1_000_000, description="procedural: how many assets to generate")
    seed: int = Field(0, ge=0, description="procedural: first seed")
    folder: str | None = Field(None, description="local: the folder to scan; procedural: where to write")
    objaverse_dir: str | None = None
    objaverse_sources: list[str] | None = None
    offline: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "SourceParams":
        if self.kind == "local" and not self.folder:
            raise ValueError("source.kind 'local' needs source.folder (the folder to scan)")
        if self.objaverse_sources is not None:
            unknown = sorted(set(self.objaverse_sources) - set(OBJAVERSE_SOURCES))
            if unknown:
                raise ValueError(f"unknown Objaverse-XL sources {unknown}; known: {list(OBJAVERSE_SOURCES)}")
        return self


class BuildParams(BaseModel):
    """Everything one run of ``build-kinematicparts20k`` needs. A refresh is the same parameters run again."""

    model_config = ConfigDict(extra="forbid")

    source: SourceParams = Field(default_factory=SourceParams)
    limit: int | None = Field(None, ge=1, description="keep at most this many candidates after the prefilter")
    prefilter: PrefilterRules = Field(default_factory=PrefilterRules)
    filters: FilterRules = Field(default_factory=FilterRules)
    render: RenderSpec = Field(default_factory=RenderSpec)
    lance_uri: str = Field("data/kp20k.lance", min_length=1, description="folder (or s3:// URI) of the tables")
    cache_dir: str = Field("data/cache", min_length=1, description="content-addressed fetch cache")
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="timeouts, retries, mirrors of each source")
    ray_address: str | None = Field(None, description="an existing Ray cluster; None: RAY_ADDRESS, else a local one")
    pool_size: int | None = Field(None, ge=1, le=4096, description="render workers; None: one per available CPU")
    recycle_after: int = Field(100, ge=1, description="assets a worker renders before it is replaced")
    asset_timeout_s: float = Field(600.0, gt=0, description="hard limit for one asset in a worker")
    shard_size: int = Field(64, ge=1, description="finished assets committed together (or those finished within a minute)")

    @field_validator("prefilter", "filters", "render", "fetch", mode="before")
    @classmethod
    def _no_unknown_keys(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            _check_keys(cls.model_fields[info.field_name].annotation, value, "")
        return value

    @model_validator(mode="after")
    def _address(self) -> "BuildParams":
        if self.ray_address is not None and not _RAY_ADDRESS.fullmatch(self.ray_address):
            raise ValueError(
                f"ray_address {self.ray_address!r} is not 'auto', 'local', 'host:port' or 'ray://host:port'"
            )
        return self

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "BuildParams":
        """Validate, turning pydantic's error into a :class:`ParamsError` with one line per field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ParamsError(describe(exc)) from None


def _check_keys(model: type[BaseModel], data: dict[str, Any], path: str) -> None:
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}unknown keys {unknown}; known: {sorted(model.model_fields)}")
    for name, value in data.items():
        annotation = model.model_fields[name].annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(annotation, value, f"{path}.{name}".lstrip("."))


def describe(exc: ValidationError) -> str:
    """One readable line per error: ``field.path: message (got value)``."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {message}{shown}" if where else message)
    return "invalid build parameters:\n  " + "\n  ".join(lines)
