"""Build parameters: every bad value is refused with a message naming the field."""

from __future__ import annotations

import pytest

from schemas.params import BuildParams, ParamsError
from schemas.render import RenderSpec


def refused(data: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        BuildParams.parse(data)
    return str(caught.value)


def test_defaults_are_valid_and_round_trip_through_json():
    params = BuildParams()
    assert params.source.kind == "procedural"
    assert BuildParams.parse(params.model_dump(mode="json")) == params


def test_local_source_needs_a_folder():
    assert "source.kind 'local' needs source.folder" in refused({"source": {"kind": "local"}})


def test_unknown_source_kind_is_named():
    message = refused({"source": {"kind": "sketchfab"}})
    assert "source.kind" in message and "'sketchfab'" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"render": {"resolutoin": 32}}, "render: unknown keys ['resolutoin']"),
        ({"render": {"parts": {"max_part": 4}}}, "render: parts: unknown keys ['max_part']"),
        ({"filters": {"min_bone": 2}}, "filters: unknown keys ['min_bone']"),
        ({"prefilter": {"licence": ["MIT"]}}, "prefilter: unknown keys ['licence']"),
        ({"shard": 3}, "shard: Extra inputs are not permitted"),
    ],
)
def test_misspelt_keys_are_errors_not_silent_defaults(data, expected):
    assert expected in refused(data)


def test_every_wrong_field_is_listed_with_its_value():
    message = refused({"limit": 0, "shard_size": -1, "asset_timeout_s": 0, "render": {"resolutoin": 32}})
    assert "render: unknown keys ['resolutoin']" in message
    assert "limit: Input should be greater than or equal to 1 (got 0)" in message
    assert "shard_size: Input should be greater than or equal to 1 (got -1)" in message
    assert "asset_timeout_s: Input should be greater than 0 (got 0)" in message


def test_nested_constraints_of_the_render_spec_apply():
    assert "render.resolution" in refused({"render": {"resolution": 8}})


@pytest.mark.parametrize("address", ["auto", "local", "127.0.0.1:6379", "ray://head.example.com:10001"])
def test_ray_addresses_accepted(address):
    assert BuildParams.parse({"ray_address": address}).ray_address == address


@pytest.mark.parametrize("address", ["127.0.0.1", "http://x:1", "head:port", ""])
def test_bad_ray_addresses_refused(address):
    assert "ray_address" in refused({"ray_address": address})


def test_unknown_objaverse_source_refused():
    assert "unknown Objaverse-XL sources ['polyhaven']" in refused(
        {"source": {"kind": "objaverse-xl", "objaverse_sources": ["github", "polyhaven"]}}
    )


def test_render_spec_given_as_a_model_keeps_its_hash():
    spec = RenderSpec(n_views=2, n_frames=2, resolution=32)
    assert BuildParams.parse({"render": spec.model_dump()}).render.config_hash() == spec.config_hash()
