"""The latents table: a real (tiny, random) diffusers VAE encodes real synthetic samples into Lance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.vae import encode_grid
from pipelines.build.dataset import KinematicPartsDataset
from pipelines.build.framepack import unpack
from pipelines.build.store import DatasetStore, StoreError
from pipelines.train.checkpoints import DatasetPin
from pipelines.train.latents import (
    LatentDataset,
    LatentReader,
    codec_id,
    encode_images,
    existing_latents,
    latent_key,
    load_codec,
    open_latents,
    precompute_latents,
)
from tests.training_helpers import SYNTHETIC_SPEC, synthetic_store, write_tiny_vae


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory) -> str:
    return str(write_tiny_vae(tmp_path_factory.mktemp("vae")))


def pin_of(uri: str, vae_id: str) -> DatasetPin:
    store = DatasetStore(uri)
    return DatasetPin(lance_uri=uri, version=store.version(), config_hash=SYNTHETIC_SPEC.config_hash(), vae_id=vae_id)


def latent_rows(uri: str) -> list[dict]:
    return open_latents(uri).to_table(columns=["latent_id", "sample_id", "vae_id", "dataset_version"]).to_pylist()


def test_precompute_encodes_each_sample_once_and_a_refresh_only_the_new_ones(tmp_path, vae_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 3)
    codec = load_codec(vae_path)
    vae_id = codec_id(codec)
    first = precompute_latents(pin_of(uri, vae_id), codec, vae_id)
    assert (first.wanted, first.encoded, first.already) == (3, 3, 0)
    again = precompute_latents(pin_of(uri, vae_id), codec, vae_id)
    assert (again.encoded, again.already, again.latents_version) == (0, 3, first.latents_version)  # nothing new: no commit
    synthetic_store(uri, 1, first=3)  # a refresh adds one asset: a new version of samples
    refreshed = precompute_latents(pin_of(uri, vae_id), codec, vae_id)
    assert (refreshed.wanted, refreshed.encoded, refreshed.already) == (4, 1, 3)
    rows = latent_rows(uri)
    assert len(rows) == len({r["latent_id"] for r in rows}) == 4
    assert all(r["latent_id"] == latent_key(r["sample_id"], vae_id) for r in rows)
    versions = sorted(r["dataset_version"] for r in rows)
    assert versions[0] == versions[2] < versions[3]  # the new one records the version it came from


def test_stored_latents_are_exactly_the_codec_output_and_partial_reads_match(tmp_path, vae_path):
    uri = str(tmp_path / "kp20k.lance")
    store = synthetic_store(uri, 2)
    codec = load_codec(vae_path)
    vae_id = codec_id(codec)
    report = precompute_latents(pin_of(uri, vae_id), codec, vae_id)
    reader = LatentReader(uri, vae_id, report.latents_version)
    for sample_id in store.existing_sample_ids():
        (rgb_blob,) = store.take_blobs("rgb", [sample_id])
        (part_blob,) = store.take_blobs("parts", [sample_id])
        expected_rgb = torch.from_numpy(encode_images(codec, unpack(rgb_blob)).astype(np.float32))
        expected_parts = torch.from_numpy(encode_images(codec, unpack(part_blob)).astype(np.float32))
        assert expected_rgb.shape == (2, 2, 4, 8, 8)  # [V, F, C, h, w]: 16 px, 2x downscale
        rgb, parts = reader.read(sample_id, [0, 1], [0, 1])
        assert torch.equal(rgb, expected_rgb) and torch.equal(parts, expected_parts)
        rgb, parts = reader.read(sample_id, [1], [1, 0])  # byte ranges of just those images
        assert torch.equal(rgb, expected_rgb[[1]][:, [1, 0]]) and torch.equal(parts, expected_parts[[1]][:, [1, 0]])


def test_the_latent_dataset_adds_the_items_views_and_frames(tmp_path, vae_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 2, spec=SYNTHETIC_SPEC.model_copy(update={"n_views": 3}))
    codec = load_codec(vae_path)
    vae_id = codec_id(codec)
    pin = pin_of(uri, vae_id).model_copy(update={"config_hash": SYNTHETIC_SPEC.model_copy(update={"n_views": 3}).config_hash()})
    report = precompute_latents(pin, codec, vae_id)
    images = KinematicPartsDataset(uri, n_views=2, n_frames=1, view_strategy="even")
    item = LatentDataset(images, LatentReader(uri, vae_id, report.latents_version))[0]
    assert item["views"].tolist() == [0, 1] and item["frames"].tolist() == [0]
    full, _ = LatentReader(uri, vae_id, report.latents_version).read(item["sample_id"], [0, 1, 2], [0, 1])
    assert torch.equal(item["rgb_latents"], full[[0, 1]][:, [0]])
    assert torch.allclose(item["rgb_latents"], encode_grid(codec, item["rgb"][None])[0], atol=2e-2)  # float16 storage


def test_missing_latents_are_a_clear_error(tmp_path, vae_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 2)
    codec = load_codec(vae_path)
    reader = LatentReader(uri, codec_id(codec), open_latents(uri).version)
    with pytest.raises(StoreError) as error:
        LatentDataset(KinematicPartsDataset(uri, n_views=2, n_frames=2), reader)
    assert error.value.reason == "latents_missing"
    with pytest.raises(StoreError) as error:
        reader.read("no-such-sample", [0], [0])
    assert error.value.reason == "latents_missing"


def test_the_codec_id_follows_the_weights(tmp_path, vae_path):
    assert codec_id(load_codec(None)) == "pixel"
    same = codec_id(load_codec(vae_path))
    assert same == codec_id(load_codec(vae_path)) and same.startswith("AutoencoderKL-")
    other = str(write_tiny_vae(tmp_path / "other", seed=1))
    assert codec_id(load_codec(other)) != same
    assert existing_latents(str(tmp_path / "fresh.lance"), same) == {}
