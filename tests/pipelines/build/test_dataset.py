"""KinematicPartsDataset over real Lance tables of synthetic samples (no Blender)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.build.colour import encode_part_image
from pipelines.build.dataset import KinematicPartsDataset, choose_frames, choose_views, collate, data_loader, split_of
from pipelines.build.framepack import unpack
from pipelines.build.store import DatasetStore, StoreError
from tests.synthetic_samples import part_grid, synthetic_sample
from schemas.render import RenderSpec
from schemas.samples import Sample

SPEC = RenderSpec(n_views=6, n_frames=5, resolution=32)


def sha(i: int) -> str:
    return f"{i:064x}"


def build(uri: str, ids: range, spec: RenderSpec = SPEC, clips: tuple[str, ...] = ("clip",)) -> dict[str, Sample]:
    written = [synthetic_sample(sha(i), clip, spec, n_parts=2 + i % 4, seed=i) for i in ids for clip in clips]
    DatasetStore(uri).write_samples(written)
    return {s.sample_id: s for s in written}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Sample]]:
    uri = str(tmp_path_factory.mktemp("kp20k"))
    return uri, build(uri, range(6))


def as_uint8(signed_unit: torch.Tensor) -> np.ndarray:
    """[V, F, C, H, W] in [-1, 1] -> uint8 [V, F, H, W, C]."""
    return ((signed_unit + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


def test_item_holds_the_exact_pixels_part_ids_and_cameras(table) -> None:
    uri, written = table
    dataset = KinematicPartsDataset(uri, n_views=3, n_frames=2, view_strategy="even", frame_strategy="even")
    assert len(dataset) == 6
    for index in range(len(dataset)):
        item = dataset[index]
        sample = written[item["sample_id"]]
        views, frames = item["views"].tolist(), item["frames"].tolist()
        assert views == [0, 2, 4] and frames == [0, 4]
        assert item["rgb"].shape == item["parts"].shape == (3, 2, 3, 32, 32)
        assert item["rgb"].dtype == torch.float32 and -1 <= item["rgb"].min() and item["rgb"].max() <= 1
        assert np.array_equal(as_uint8(item["rgb"]), unpack(sample.rgb, views, frames))

        n_parts = len(sample.part_map.palette)
        ids = part_grid(6, 5, 32, n_parts, seed=int(sample.sha256, 16))[views][:, frames]
        assert item["part_ids"].dtype == torch.int64
        assert np.array_equal(item["part_ids"].numpy(), ids), "every pixel decodes to its part id"
        palette = np.array(sample.part_map.palette, dtype=np.uint8)
        assert np.array_equal(as_uint8(item["parts"]), encode_part_image(ids, palette))
        assert np.array_equal(item["alpha"][:, :, 0].numpy(), (ids >= 0).astype(np.float32))

        assert item["n_parts"].item() == n_parts
        assert item["palette"].shape == (64, 3)
        assert np.array_equal(item["palette"][:n_parts].numpy(), palette)
        assert not item["palette"][n_parts:].any()

        cams = item["cameras"]
        assert cams["intrinsics"].shape == (3, 3, 3) and cams["extrinsics"].shape == (3, 4, 4)
        for k, v in enumerate(views):
            camera = sample.cameras[v]
            assert cams["azimuth"][k].item() == pytest.approx(math.radians(camera.azimuth_deg), abs=1e-6)
            assert cams["elevation"][k].item() == pytest.approx(math.radians(camera.elevation_deg), abs=1e-6)
            assert torch.allclose(cams["extrinsics"][k], torch.tensor(camera.extrinsics, dtype=torch.float32))
            assert torch.allclose(cams["intrinsics"][k], torch.tensor(camera.intrinsics, dtype=torch.float32))


@pytest.mark.parametrize("view_strategy", ["first", "even", "random"])
@pytest.mark.parametrize("frame_strategy", ["first", "even", "random"])
def test_view_zero_is_always_the_condition_view(table, view_strategy: str, frame_strategy: str) -> None:
    uri, written = table
    dataset = KinematicPartsDataset(uri, 4, 3, view_strategy=view_strategy, frame_strategy=frame_strategy, seed=3)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[epoch]
        views, frames = item["views"].tolist(), item["frames"].tolist()
        assert views[0] == 0 and item["cameras"]["azimuth"][0].item() == 0.0
        assert views == sorted(set(views)) and len(views) == 4 and max(views) < 6
        assert len(frames) == 3 and max(frames) < 5
        stride = np.diff(frames)
        assert (stride == stride[0]).all() and stride[0] >= 1, "frames keep a constant rate"
        condition = unpack(written[item["sample_id"]].rgb, [0], frames)[0]
        assert np.array_equal(as_uint8(item["rgb"])[0], condition)


def test_random_choices_are_reproducible_and_change_with_the_epoch() -> None:
    def draw(epoch: int) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([7, epoch, 0])
        return choose_views(8, 3, "random", rng), choose_frames(8, 3, "random", rng)

    assert draw(1) == draw(1)
    assert len({str(draw(epoch)) for epoch in range(10)}) > 1


def test_even_spreads_views_over_the_orbit_and_frames_over_the_clip() -> None:
    rng = np.random.default_rng(0)
    assert choose_views(10, 4, "even", rng) == [0, 2, 5, 7]
    assert choose_frames(10, 4, "even", rng) == [0, 3, 6, 9]
    assert choose_frames(5, 3, "even", rng) == [0, 2, 4]
    assert choose_frames(5, 1, "even", rng) == [0]
    assert choose_frames(10, 4, "first", rng) == choose_views(10, 4, "first", rng) == [0, 1, 2, 3]


def test_split_is_by_asset_disjoint_complete_and_stable(tmp_path: Path) -> None:
    uri = str(tmp_path)
    spec = RenderSpec(n_views=2, n_frames=2, resolution=16)
    written = build(uri, range(40), spec, clips=("Walk", "Run"))
    train = KinematicPartsDataset(uri, 2, 2, split="train", val_fraction=0.25)
    val = KinematicPartsDataset(uri, 2, 2, split="val", val_fraction=0.25)
    everything = KinematicPartsDataset(uri, 2, 2)
    assert len(everything) == 80
    assert sorted(train.sample_ids + val.sample_ids) == sorted(everything.sample_ids)
    train_assets = Counter(written[i].sha256 for i in train.sample_ids)
    val_assets = Counter(written[i].sha256 for i in val.sample_ids)
    assert not set(train_assets) & set(val_assets)
    assert set(train_assets.values()) == set(val_assets.values()) == {2}, "both clips of an asset share its split"
    assert 0 < len(val_assets) < 40
    assert all(split_of(a, 0.25) == "val" for a in val_assets)

    build(uri, range(40, 60), spec, clips=("Walk", "Run"))
    grown_val = KinematicPartsDataset(uri, 2, 2, split="val", val_fraction=0.25)
    assert set(val.sample_ids) <= set(grown_val.sample_ids)
    assert grown_val.version > val.version


def test_pinned_version_ignores_later_writes(tmp_path: Path) -> None:
    uri = str(tmp_path)
    first = build(uri, range(3))
    pinned = KinematicPartsDataset(uri, 2, 2)
    build(uri, range(3, 5))
    again = KinematicPartsDataset(uri, 2, 2, version=pinned.version)
    latest = KinematicPartsDataset(uri, 2, 2)
    assert sorted(again.sample_ids) == sorted(pinned.sample_ids) == sorted(first)
    assert len(latest) == 5 and latest.version > pinned.version
    assert np.array_equal(again[1]["part_ids"], pinned[1]["part_ids"])


def test_rows_that_cannot_serve_the_grid_are_counted_not_served(tmp_path: Path) -> None:
    uri = str(tmp_path)
    small = RenderSpec(n_views=2, n_frames=5, resolution=32)
    build(uri, range(3))
    build(uri, range(3, 5), small)
    dataset = KinematicPartsDataset(uri, n_views=3, n_frames=2)
    assert len(dataset) == 3 and dataset.excluded == {"too_few_views": 2}
    only_small = KinematicPartsDataset(uri, n_views=2, n_frames=2, config_hash=small.config_hash())
    assert len(only_small) == 2
    with pytest.raises(StoreError) as err:
        KinematicPartsDataset(uri, n_views=3, n_frames=2, config_hash=small.config_hash())
    assert err.value.reason == "no_samples"
    with pytest.raises(ValueError, match="strategies"):
        KinematicPartsDataset(uri, 2, 2, view_strategy="spiral")
    with pytest.raises(ValueError, match="val_fraction"):
        KinematicPartsDataset(uri, 2, 2, val_fraction=1.0)


def test_collate_refuses_mixed_resolutions(tmp_path: Path) -> None:
    uri = str(tmp_path)
    build(uri, range(1))
    build(uri, range(1, 2), RenderSpec(n_views=6, n_frames=5, resolution=48))
    dataset = KinematicPartsDataset(uri, 2, 2)
    with pytest.raises(ValueError, match="config_hash"):
        collate([dataset[0], dataset[1]])


def test_two_spawned_workers_yield_every_sample_once_with_the_same_tensors(table) -> None:
    uri, written = table
    dataset = KinematicPartsDataset(uri, n_views=2, n_frames=3)
    dataset[0]  # the parent holds an open Lance handle: workers must not inherit it
    batches = list(data_loader(dataset, batch_size=2, num_workers=2))
    seen = Counter(sid for batch in batches for sid in batch["sample_id"])
    assert seen == Counter({sid: 1 for sid in written})
    batch = batches[0]
    assert batch["rgb"].shape == (2, 2, 3, 3, 32, 32) and batch["cameras"]["extrinsics"].shape == (2, 2, 4, 4)
    in_process = collate([dataset[0], dataset[1]])
    assert in_process["sample_id"] == batch["sample_id"]
    for key in ("rgb", "parts", "part_ids", "alpha", "palette", "n_parts"):
        assert torch.equal(in_process[key], batch[key]), key
