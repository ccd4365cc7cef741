"""Training across processes with ``accelerate launch``: the command, and a real 2-process DDP run of
the tiny model on the CPU (gloo), which is as far as a machine without GPUs can check the path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from models.sp4d import SP4DModel
from pipelines.train.checkpoints import RunError, RunLock, latest_checkpoint, list_checkpoints
from pipelines.train.launch import ACCELERATE_CONFIGS, launch, launch_command
from pipelines.train.loop import read_metrics
from pipelines.train.runs import open_run, pin_dataset
from tests.training_helpers import synthetic_store, tiny_config

REPO = Path(__file__).resolve().parents[3]


def test_the_command_launches_this_module_with_the_strategys_config(tmp_path):
    command = launch_command(tmp_path / "run", "fsdp", 8, port=29555)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(ACCELERATE_CONFIGS["fsdp"])
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--main_process_port") + 1] == "29555"
    assert command[-3:] == ["-m", "pipelines.train.launch", str((tmp_path / "run").resolve())]
    # Read as accelerate reads them.
    configs = {name: load_config_from_file(str(path)) for name, path in ACCELERATE_CONFIGS.items()}
    assert {name: c.distributed_type for name, c in configs.items()} == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_use_orig_params"] is True
    for bad in (dict(strategy="zero9", processes=2), dict(strategy="ddp", processes=1)):
        with pytest.raises(RunError) as error:
            launch_command(tmp_path, **bad)
        assert error.value.reason == "bad_parameters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPU = {"ACCELERATE_USE_CPU": "true"}  # the same launch, gloo processes on the CPU

LAUNCH_IN_A_CHILD = """
import sys
from pathlib import Path
from pipelines.train.launch import launch
from pipelines.train.runs import read_run
run_dir = Path(sys.argv[1])
record = read_run(run_dir)
launch(run_dir, record.dataset, record.config, 2, env={"ACCELERATE_USE_CPU": "true"}, port=int(sys.argv[2]))
"""


def processes_of(run_dir: Path) -> set[int]:
    """Live processes whose command line names this run folder (accelerate launch and its workers)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "pipelines.train.launch" in command and str(run_dir.resolve()) in command and proc.name.isdigit():
            found.add(int(proc.name))
    return found - {os.getpid()}


def wait_for(condition, what: str, limit_s: float = 300.0) -> None:
    """Poll until ``condition()``; a hang fails with ``what`` (a deadline, not a measured time)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_gloo_processes_train_die_with_their_launcher_and_resume(tmp_path):
    """A real 2-process DDP launch of the tiny model: SIGKILL its launcher after the first checkpoint,
    every training process goes with it, and a new launch resumes from the newest checkpoint."""
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 3)
    config = tiny_config(max_steps=200, rgb_steps=1, checkpoint_every=1, keep_checkpoints=None)
    pin = pin_dataset(uri, None, None, config)
    run_dir = tmp_path / "run"
    open_run(run_dir, pin, config)
    child = subprocess.Popen([sys.executable, "-c", LAUNCH_IN_A_CHILD, str(run_dir), str(free_port())], cwd=REPO)
    try:
        wait_for(lambda: list_checkpoints(run_dir) or child.poll() is not None, "a first checkpoint")
        assert child.poll() is None, "the launch ended before its first checkpoint"
        trainers = processes_of(run_dir)
        assert len(trainers) >= 3  # accelerate launch and two training processes
    finally:
        child.kill()
        child.wait()
    wait_for(lambda: not (processes_of(run_dir) & trainers), "the training processes to die with their launcher", 60)

    done = latest_checkpoint(run_dir).step
    assert 1 <= done < 200
    more = config.model_copy(update={"max_steps": done + 1})  # the budget may change on a restart
    lines: list[str] = []
    report = launch(run_dir, pin, more, 2, on_line=lines.append, env=CPU, port=free_port())
    assert report.processes == 2, "\n".join(lines[-20:])
    assert report.start_step == done and report.final_step == done + 1
    assert Path(report.resumed_from).name == f"step-{done:08d}"
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(1, done + 2))
    assert rows[-1]["phase_both"] == 1.0  # phase 2 (both branches) from step 2 on
    SP4DModel.from_pretrained(latest_checkpoint(run_dir).path / "sp4d")  # a loadable diffusers folder
    assert json.loads((run_dir / "launch.json").read_text())["config"]["max_steps"] == done + 1
    with RunLock(run_dir):  # the launcher released the run's lock
        pass


def test_a_failed_launch_says_why(tmp_path):
    uri = str(tmp_path / "kp20k.lance")
    synthetic_store(uri, 3)
    config = tiny_config(max_steps=1, vae_path=str(tmp_path / "no-vae"))
    pin = pin_dataset(uri, None, None, tiny_config(max_steps=1))
    open_run(tmp_path / "run", pin, tiny_config(max_steps=1))
    with pytest.raises(RunError) as error:
        launch(tmp_path / "run", pin, config, 2, env=CPU, port=free_port())
    assert error.value.reason == "launch_failed" and "no-vae" in str(error.value)
