"""Training across processes with ``accelerate launch``: the command, and a real 2-process DDP run of
the tiny model on the CPU (gloo), which is as far as a machine without GPUs can check the path."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from models.sp4d import SP4DModel
from pipelines.train.checkpoints import RunError, RunLock, list_checkpoints
from pipelines.train.launch import ACCELERATE_CONFIGS, launch, launch_command
from pipelines.train.loop import read_metrics
from pipelines.train.runs import open_run, pin_dataset
from tests.training_helpers import synthetic_store, tiny_config


def test_the_command_launches_this_module_with_the_strategys_config(tmp_path):
    command = launch_command(tmp_path / "run", "fsdp", 8, port=29555)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(ACCELERATE_CONFIGS["fsdp"])
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--main_process_port") + 1] == "29555"
    assert command[-3:] == ["-m", "pipelines.train.launch", str((tmp_path / "run").resolve())]
    kinds = {name: yaml.safe_load(path.read_text())["distributed_type"] for name, path in ACCELERATE_CONFIGS.items()}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}
    fsdp = yaml.safe_load(ACCELERATE_CONFIGS["fsdp"].read_text())["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_use_orig_params"] is True
    for bad in (dict(strategy="zero9", processes=2), dict(strategy="ddp", processes=1)):
        with pytest.raises(RunError) as error:
            launch_command(tmp_path, **bad)
        assert error.value.reason == "bad_parameters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_the_tiny_model_through_accelerate_launch(tmp_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 3)
    config = tiny_config(max_steps=2, rgb_steps=1, checkpoint_every=1)
    pin = pin_dataset(uri, None, None, config)
    run_dir = tmp_path / "run"
    open_run(run_dir, pin, config)
    lines: list[str] = []
    report = launch(run_dir, pin, config, 2, on_line=lines.append, env={"ACCELERATE_USE_CPU": "true"}, port=free_port())
    assert report.processes == 2, "\n".join(lines[-20:])
    assert report.final_step == 2 and report.start_step == 0
    assert [c.step for c in list_checkpoints(run_dir)] == [1, 2]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]
    # The second step is phase 2 (both branches), the checkpoint a loadable diffusers folder.
    assert read_metrics(run_dir)[1]["phase_both"] == 1.0
    SP4DModel.from_pretrained(list_checkpoints(run_dir)[-1].path / "sp4d")
    assert json.loads((run_dir / "launch.json").read_text())["config"]["max_steps"] == 2
    with RunLock(run_dir):  # the launcher released the run's lock
        pass

    # Started again with a larger budget, the launch resumes from step 2.
    more = config.model_copy(update={"max_steps": 3})
    resumed = launch(run_dir, pin, more, 2, env={"ACCELERATE_USE_CPU": "true"}, port=free_port())
    assert resumed.start_step == 2 and resumed.final_step == 3 and Path(resumed.resumed_from).name == "step-00000002"


def test_a_failed_launch_says_why(tmp_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 3)
    config = tiny_config(max_steps=1, vae_path=str(tmp_path / "no-vae"))
    pin = pin_dataset(uri, None, None, tiny_config(max_steps=1))
    open_run(tmp_path / "run", pin, tiny_config(max_steps=1))
    with pytest.raises(RunError) as error:
        launch(tmp_path / "run", pin, config, 2, env={"ACCELERATE_USE_CPU": "true"}, port=free_port())
    assert error.value.reason == "launch_failed" and "no-vae" in str(error.value)
