"""The training loop in this process: real Lance tables of synthetic samples, the real tiny SP4D model,
real accelerate checkpoints. No Prefect here (the flow and the SIGKILL test are in tests/flows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.vae import PixelCodec
from pipelines.train.checkpoints import (
    RunError,
    RunLock,
    clear_staging,
    latest_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    staging_path,
)
from pipelines.train.loop import (
    EpochSampler,
    TrainReport,
    DiffusionTrainer,
    conditioning_encoder,
    model_inputs,
    save_whole_model,
    noise_generator,
    read_metrics,
    state_digest,
    train,
)
from models.errors import WeightsNotFoundError
from models.image_encoder import OpenCLIPImageEncoder, frame_embeddings
from models.sp4d import SP4DModel
from pipelines.train.runs import open_run, pin_dataset
from pipelines.version import code_version
from tests.training_helpers import synthetic_store, tiny_config

N_ASSETS = 4  # split seed 0, val_fraction 0.25: assets 0, 1, 3 train (asset 2 held out)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lance(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("train-data") / "kp20k.lance")
    synthetic_store(uri, N_ASSETS)
    return uri


def start(run_dir: Path, lance: str, **overrides) -> TrainReport:
    config = tiny_config(**overrides)
    pin = pin_dataset(lance, None, None, config)
    record = open_run(run_dir, pin, config)
    return train(run_dir, record.dataset, config)


def weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir / "sp4d" / "diffusion_pytorch_model.safetensors")


def ema_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir / "sp4d_ema" / "diffusion_pytorch_model.safetensors")


def test_checkpoints_hold_ema_weights_that_lag_the_trained_ones(uninterrupted):
    run_dir, _ = uninterrupted
    first, last = run_dir / "checkpoints" / "step-00000002", run_dir / "checkpoints" / "step-00000006"
    raw, ema, ema_before = weights(last), ema_weights(last), ema_weights(first)
    assert ema.keys() == raw.keys()
    # The RGB branch trains throughout (the part branch's average restarts at its copy, step 3).
    moved = [k for k in raw if k.startswith("rgb_branch.") and not torch.equal(ema[k], ema_before[k])]
    assert moved  # the average follows training ...
    # ... but lags it: with decay 0.9999 it stays much closer to where it started than the weights do.
    k = max(moved, key=lambda name: (raw[name] - ema_before[name]).abs().max())
    assert (ema[k] - ema_before[k]).abs().max() < 0.1 * (raw[k] - ema_before[k]).abs().max()
    model = SP4DModel.from_pretrained(last / "sp4d_ema")
    assert torch.equal(model.state_dict()[k], ema[k])


def test_without_ema_no_average_is_saved(tmp_path, lance):
    start(tmp_path, lance, ema_decay=None, max_steps=2)
    assert not (tmp_path / "checkpoints" / "step-00000002" / "sp4d_ema").exists()


def branch(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, lance) -> tuple[Path, TrainReport]:
    """Six steps with gradient accumulation 2 over 3 training items: steps straddle epoch ends."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run_dir, start(run_dir, lance, gradient_accumulation_steps=2)


def test_checkpoints_are_named_by_step_with_their_record_beside(uninterrupted):
    run_dir, report = uninterrupted
    assert [c.step for c in list_checkpoints(run_dir)] == [2, 4, 6] and report.final_step == 6
    record = latest_checkpoint(run_dir).record()
    assert record.step == 6 and record.phase == "both" and record.code_version == code_version()
    assert record.dataset == report.dataset and record.config == tiny_config(gradient_accumulation_steps=2)
    assert json.loads((run_dir / "checkpoints" / "step-00000002.json").read_text())["phase"] == "rgb"
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, lance, uninterrupted):
    reference_dir, _ = uninterrupted
    first = start(tmp_path, lance, gradient_accumulation_steps=2, max_steps=3)  # stops at step 3: mid-epoch, at the phase switch
    assert first.final_step == 3 and latest_checkpoint(tmp_path).step == 3
    resumed = start(tmp_path, lance, gradient_accumulation_steps=2)
    saved_optimizer = torch.load(tmp_path / "checkpoints" / "step-00000003" / "optimizer.bin", weights_only=False)
    assert resumed.start_step == 3 and resumed.resumed_from.endswith("step-00000003")
    assert resumed.resumed_optimizer_digest == state_digest(saved_optimizer)
    assert resumed.final_step == 6
    # Same step count, optimiser, scheduler, data position and noise: bit for bit the same run.
    ours, reference = weights(tmp_path / "checkpoints" / "step-00000006"), weights(reference_dir / "checkpoints" / "step-00000006")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    ours, reference = ema_weights(tmp_path / "checkpoints" / "step-00000006"), ema_weights(reference_dir / "checkpoints" / "step-00000006")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert read_metrics(tmp_path) == read_metrics(reference_dir)
    for name in ("optimizer.bin", "scheduler.bin"):
        a = torch.load(tmp_path / "checkpoints" / "step-00000006" / name, weights_only=False)
        b = torch.load(reference_dir / "checkpoints" / "step-00000006" / name, weights_only=False)
        assert state_digest(a) == state_digest(b)


def test_phase_one_trains_the_rgb_branch_alone_and_phase_two_starts_from_its_copy(tmp_path, lance):
    lr = tiny_config().learning_rate
    start(tmp_path, lance, max_steps=4, checkpoint_every=1)
    state = {s: weights(tmp_path / "checkpoints" / f"step-{s:08d}") for s in (1, 2, 3, 4)}
    assert [latest_checkpoint(tmp_path).record().phase, resolve_checkpoint(tmp_path / "checkpoints" / "step-00000003").record().phase] == ["both", "rgb"]
    rgb = {s: branch(state[s], "rgb_branch.") for s in state}
    part = {s: branch(state[s], "part_branch.") for s in state}
    fusion = {s: branch(state[s], "bidifuse.") for s in state}
    # Phase 1 (steps 1-3): the RGB branch learns; the part branch and BiDiFuse do not move, and
    # BiDiFuse's output convolutions stay at zero.
    assert not all(torch.equal(rgb[1][k], rgb[3][k]) for k in rgb[1])
    assert all(torch.equal(part[1][k], part[3][k]) for k in part[1])
    assert all(torch.equal(fusion[1][k], fusion[3][k]) for k in fusion[1])
    assert all(torch.count_nonzero(v) == 0 for k, v in fusion[3].items() if k.split(".")[2] == "2")
    # Step 4 starts phase 2: the part branch became a copy of the RGB branch, then took one Adam
    # step (at most the learning rate per weight). Before the copy it was an independent initialisation.
    assert max(float((part[4][k] - rgb[3][k]).abs().max()) for k in part[4]) <= lr * 1.001
    assert max(float((part[3][k] - rgb[3][k]).abs().max()) for k in part[3]) > 100 * lr


def test_an_unfinished_save_is_not_a_checkpoint(tmp_path, lance):
    start(tmp_path, lance, max_steps=2)
    staged = staging_path(tmp_path, 4)  # a save killed before its rename
    clear_staging(staged)
    (staged / "optimizer.bin").write_bytes(b"half")
    orphan = tmp_path / "checkpoints" / "step-00000006"  # a folder whose record never got written
    orphan.mkdir()
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]
    assert resolve_checkpoint(tmp_path).step == 2
    with pytest.raises(RunError) as error:
        resolve_checkpoint(orphan)
    assert error.value.reason == "checkpoint_not_found"
    resumed = start(tmp_path, lance, max_steps=4)
    assert resumed.start_step == 2 and [c.step for c in list_checkpoints(tmp_path)] == [2, 4]


def test_keep_checkpoints_prunes_the_oldest(tmp_path, lance):
    start(tmp_path, lance, max_steps=6, checkpoint_every=1, keep_checkpoints=2, rgb_steps=6)
    assert [c.step for c in list_checkpoints(tmp_path)] == [5, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000005", "step-00000005.json", "step-00000006", "step-00000006.json",
    ]


def test_the_sampler_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(10, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(10))
    first = torch.randn(4, generator=noise_generator(0, 7, 0, torch.device("cpu")))
    assert torch.equal(first, torch.randn(4, generator=noise_generator(0, 7, 0, torch.device("cpu"))))
    assert not torch.equal(first, torch.randn(4, generator=noise_generator(0, 8, 0, torch.device("cpu"))))


def test_state_digest_sees_a_single_changed_value():
    state = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-4}]}
    changed = {"state": {0: {"exp_avg": torch.tensor([0.0, 0.0, 1e-12]), "step": torch.tensor(2.0)}}, "param_groups": [{"lr": 1e-4}]}
    assert state_digest(state) == state_digest({**state}) != state_digest(changed)


def test_one_trainer_per_run_folder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunError) as error, RunLock(tmp_path):
            pass
    assert error.value.reason == "run_locked"
    with RunLock(tmp_path):  # released on exit
        pass


def test_a_run_starts_both_branches_from_the_converted_network(tmp_path, lance):
    """rgb_init: the folder models.convert writes (here a tiny network saved the same way)."""
    from models.unet import MultiViewUNet
    from tests.models.inputs import trained_like

    torch.manual_seed(0)
    rgb = trained_like(MultiViewUNet(**MultiViewUNet.tiny_config(in_channels=6, out_channels=3, reference_channels=3)))
    rgb.save_pretrained(tmp_path / "converted" / "unet")
    with pytest.raises(WeightsNotFoundError) as no_encoder:
        start(tmp_path / "no-encoder", lance, rgb_init=str(tmp_path / "converted"), max_steps=1, ema_decay=None)
    assert str(tmp_path / "converted" / "image_encoder") in str(no_encoder.value)
    OpenCLIPImageEncoder(**OpenCLIPImageEncoder.tiny_config()).save_pretrained(tmp_path / "converted" / "image_encoder")
    report = start(tmp_path / "run", lance, rgb_init=str(tmp_path / "converted"), max_steps=1, learning_rate=1e-12,
                   warmup_steps=0, ema_decay=None)
    assert report.final_step == 1
    trained = weights(tmp_path / "run" / "checkpoints" / "step-00000001")
    expected = rgb.state_dict()
    for prefix in ("rgb_branch.", "part_branch."):
        ours = branch(trained, prefix)
        assert ours.keys() == expected.keys()
        assert all(torch.allclose(ours[k], expected[k], atol=1e-6) for k in expected)


def test_the_input_views_frames_are_embedded_by_the_configured_encoder(tmp_path):
    torch.manual_seed(0)
    OpenCLIPImageEncoder(**OpenCLIPImageEncoder.tiny_config()).save_pretrained(tmp_path / "clip")
    encoder = conditioning_encoder(tiny_config(image_encoder=str(tmp_path / "clip")), context_dim=16)
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 2, 3, 3, 16, 16, generator=g) * 2 - 1  # [B, V, F, 3, H, W]
    batch = {
        "rgb": rgb,
        "parts": rgb.flip(-1),
        "cameras": {"elevation": torch.zeros(2, 2), "azimuth": torch.tensor([[0.0, 1.0], [0.5, 2.0]])},
        "part_ids": torch.zeros(2, 2, 3, 16, 16, dtype=torch.long),
    }
    inputs = model_inputs(batch, PixelCodec(), 16, encoder)
    assert inputs["image_embeddings"].shape == (2, 3, 16)
    torch.testing.assert_close(inputs["image_embeddings"], frame_embeddings(encoder, rgb[:, 0]))
    assert not torch.allclose(inputs["image_embeddings"][:, 0], inputs["image_embeddings"][:, 1])
    # No encoder configured (the tiny demo): one zero token, documented as the unconditional context.
    assert conditioning_encoder(tiny_config(), context_dim=16) is None
    assert not model_inputs(batch, PixelCodec(), 16)["image_embeddings"].any()
    with pytest.raises(RunError) as wrong_size:
        conditioning_encoder(tiny_config(image_encoder=str(tmp_path / "clip")), context_dim=32)
    assert wrong_size.value.reason == "bad_parameters"
    with pytest.raises(WeightsNotFoundError) as missing:
        conditioning_encoder(tiny_config(image_encoder=str(tmp_path / "nowhere")), context_dim=16)
    assert str(tmp_path / "nowhere") in str(missing.value)


def test_gathered_whole_weights_save_as_a_folder_that_loads_bit_for_bit(tmp_path):
    """What the FSDP save does with the state accelerate gathers (FSDP itself needs GPUs)."""
    from models.losses import DiffusionObjective
    from models.unet import MultiViewUNet
    from tests.models.inputs import trained_like

    torch.manual_seed(0)
    model = trained_like(SP4DModel(branch_config=MultiViewUNet.tiny_config()))
    save_whole_model(model, DiffusionTrainer(model, DiffusionObjective()).state_dict(), tmp_path / "sp4d")
    loaded = SP4DModel.from_pretrained(tmp_path / "sp4d")
    assert loaded.config.branch_config == json.loads(json.dumps(model.config.branch_config))  # JSON: tuples -> lists
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
