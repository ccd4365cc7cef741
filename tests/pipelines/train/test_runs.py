"""Run folders and dataset pins: which version and configuration a run trains on, and what a restart
must agree with. Real Lance tables of synthetic samples."""

from __future__ import annotations

import pytest

from pipelines.build.dataset import split_of
from pipelines.build.store import StoreError, open_table
from pipelines.train.checkpoints import RunError
from pipelines.train.runs import locate_run, open_run, pin_dataset
from schemas.render import RenderSpec
from tests.training_helpers import (
    SYNTHETIC_SPEC,
    asset_sha,
    synthetic_store,
    tiny_config,
)

N_ASSETS = 4  # split seed 0, val_fraction 0.25: assets 0, 1, 3 train, asset 2 held out


@pytest.fixture(scope="module")
def lance(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("runs-data") / "kp20k.lance")
    synthetic_store(uri, N_ASSETS)
    return uri


def test_the_pin_splits_by_asset_and_records_the_version(lance):
    pin = pin_dataset(lance, None, None, tiny_config())
    expected = [split_of(asset_sha(i), 0.25, 0) for i in range(N_ASSETS)]
    assert (pin.n_train, pin.n_val) == (expected.count("train"), expected.count("val")) == (3, 1)
    assert pin.version >= 1 and pin.config_hash == SYNTHETIC_SPEC.config_hash() and pin.vae_id == "pixel"
    # tagged, so that a build's clean-up cannot delete the version a run trains on
    assert open_table(lance, "samples").tags.list()[f"pinned-v{pin.version}"]["version"] == pin.version


def test_a_restart_must_match_the_recorded_run(tmp_path, lance):
    config = tiny_config()
    pin = pin_dataset(lance, None, None, config)
    open_run(tmp_path, pin, config)
    assert open_run(tmp_path, pin, tiny_config(max_steps=50)).config.max_steps == 50  # the budget may grow
    with pytest.raises(RunError) as error:
        open_run(tmp_path, pin, tiny_config(learning_rate=1e-3))
    assert error.value.reason == "config_mismatch" and "learning_rate" in str(error.value)
    with pytest.raises(RunError) as error:
        open_run(tmp_path, pin.model_copy(update={"version": pin.version + 1}), config)
    assert error.value.reason == "dataset_mismatch"


def test_an_unnamed_run_is_found_again_and_a_named_run_keeps_its_pin(tmp_path, lance):
    config = tiny_config()
    run_dir, pin, recorded = locate_run(tmp_path, None, lance, None, None, config)
    assert run_dir.name == f"samples-v{pin.version}-{pin.config_hash[:8]}" and recorded is None
    open_run(run_dir, pin, config)
    again, _, recorded = locate_run(tmp_path, None, lance, None, None, config)
    assert again == run_dir and recorded.dataset == pin


@pytest.mark.parametrize(
    ("version", "config_hash", "reason"),
    [(999, None, "version_not_found"), (None, "0" * 16, "config_not_found")],
)
def test_bad_dataset_requests_fail_with_a_reason(lance, version, config_hash, reason):
    with pytest.raises(StoreError) as error:
        pin_dataset(lance, version, config_hash, tiny_config())
    assert error.value.reason == reason


def test_empty_and_ambiguous_tables_are_refused(tmp_path):
    empty = str(tmp_path / "empty.lance")
    synthetic_store(empty, 0)
    with pytest.raises(StoreError) as error:
        pin_dataset(empty, None, None, tiny_config())
    assert error.value.reason == "no_samples"
    mixed = str(tmp_path / "mixed.lance")
    synthetic_store(mixed, 2)
    synthetic_store(mixed, 2, spec=RenderSpec(n_views=2, n_frames=2, resolution=24), first=2)
    with pytest.raises(StoreError) as error:
        pin_dataset(mixed, None, None, tiny_config())
    assert error.value.reason == "ambiguous_config"


def test_all_held_out_is_refused(lance):
    with pytest.raises(StoreError) as error:
        pin_dataset(lance, None, None, tiny_config(val_fraction=0.999, split_seed=1))
    assert error.value.reason == "no_training_samples"
