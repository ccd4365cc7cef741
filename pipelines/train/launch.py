"""Training on several GPUs: ``accelerate launch`` of this module, one process per GPU.

The launcher (:func:`launch`, called by the ``train-sp4d`` flow when ``torch.cuda.device_count() > 1``)
holds the run's lock while it runs

    accelerate launch --config_file infra/accelerate/<ddp|fsdp>.yaml --num_processes N \\
        -m pipelines.train.launch <run dir>

and each process (:func:`main`) reads what to train from ``<run dir>/launch.json`` (the dataset pin
and :class:`~pipelines.train.config.TrainConfig` of this request, written by the launcher) and runs
:func:`pipelines.train.loop.train`; the loop shards batches per process and writes checkpoints and
logs from the main process, which also writes the report (``train-report.json``) the launcher returns.

Nothing outlives its launcher: the ``accelerate launch`` process gets SIGKILL when the launcher dies
(``PR_SET_PDEATHSIG``), and each training process when ``accelerate launch`` dies. So a SIGKILLed flow
leaves no trainer behind, and a restarted one resumes from the newest checkpoint as in one process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Literal, Sequence

from pipelines.files import write_atomic
from pipelines.train.checkpoints import DatasetPin, RunError, RunLock
from pipelines.train.config import TrainConfig
from pipelines.train.runs import RunRecord
from pipelines.version import code_version

Strategy = Literal["ddp", "fsdp"]
ACCELERATE_CONFIGS: dict[str, Path] = {
    name: Path(__file__).resolve().parents[2] / "infra" / "accelerate" / f"{name}.yaml" for name in ("ddp", "fsdp")
}
REPORT = "train-report.json"
REQUEST = "launch.json"
PR_SET_PDEATHSIG = 1
LOG_TAIL = 40
# The last line of a training process's traceback (torchrun may prefix it): the reason to report first.
WORKER_EXCEPTION = re.compile(r"^(\[rank\d+\]: )?[\w.]+(Error|Exception): ")


def launch_command(run_dir: Path, strategy: Strategy, processes: int, port: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line that trains ``run_dir`` on ``processes`` processes."""
    if strategy not in ACCELERATE_CONFIGS:
        raise RunError("bad_parameters", f"multi_gpu must be one of {sorted(ACCELERATE_CONFIGS)}, got {strategy!r}")
    if processes < 2:
        raise RunError("bad_parameters", f"a multi-process launch needs at least 2 processes, got {processes}")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS[strategy])]
    command += ["--num_processes", str(processes)]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return command + ["-m", "pipelines.train.launch", str(Path(run_dir).resolve())]


def launch(
    run_dir: Path,
    pin: DatasetPin,
    config: TrainConfig,
    processes: int,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
):
    """Train ``run_dir`` (already opened by :func:`pipelines.train.runs.open_run`) on ``processes``
    processes with ``config.multi_gpu``'s accelerate configuration; returns the main process's
    :class:`~pipelines.train.loop.TrainReport`. Output lines go to ``on_line`` as they come; a failed
    launch raises ``RunError("launch_failed")`` with its exit status and last lines. ``env`` is added to
    the processes' environment (``ACCELERATE_USE_CPU=true`` runs them on the CPU with gloo)."""
    from pipelines.train.loop import TrainReport

    run_dir = Path(run_dir)
    command = launch_command(run_dir, config.multi_gpu, processes, port)
    report_path = run_dir / REPORT
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    with RunLock(run_dir):
        report_path.unlink(missing_ok=True)
        request = RunRecord(dataset=pin, config=config, code_version=code_version())
        write_atomic(run_dir / REQUEST, request.model_dump_json(indent=1))
        with subprocess.Popen(
            [sys.executable, "-c", EXEC_DYING_WITH_PARENT, str(os.getpid()), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
        ) as process:
            assert process.stdout is not None
            causes = []
            for line in process.stdout:
                tail.append(line.rstrip())
                if WORKER_EXCEPTION.match(line):
                    causes.append(line.strip())
                if on_line:
                    on_line(line.rstrip())
        if process.returncode != 0 or not report_path.is_file():
            raise RunError(
                "launch_failed",
                f"`{' '.join(command)}` exited with status {process.returncode}"
                + ("" if report_path.is_file() else f" and wrote no {REPORT}")
                + "".join(f"\n{cause}" for cause in causes[:1])
                + "\nLast lines:\n"
                + "\n".join(tail),
            )
    return TrainReport.model_validate_json(report_path.read_text())


# Runs `argv[2:]` in place of this interpreter after asking for SIGKILL when the launcher (argv[1])
# dies; the signal request survives exec. Not a preexec_fn: forking a process with lance's threads
# and running Python in the child before exec can deadlock.
EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """One training process of a launch (``accelerate launch ... -m pipelines.train.launch RUN_DIR``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train.launch",
        description="One process of a multi-GPU SP4D training run. Started by `accelerate launch` (see "
        "pipelines/train/launch.py); trains the run recorded in RUN_DIR/run.json.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder whose launch.json (written by the launcher) names the data and the config")
    args = parser.parse_args(argv)
    _die_with_parent()
    if os.getppid() == 1:  # the launcher is already gone
        return 1
    from pipelines.train.loop import train

    if not (args.run_dir / REQUEST).is_file():
        parser.error(f"{args.run_dir} has no {REQUEST}: start training with the train-sp4d flow (kp20k train), which writes it")
    record = RunRecord.model_validate_json((args.run_dir / REQUEST).read_text())
    report = train(args.run_dir, record.dataset, record.config, lock=False)
    if int(os.environ.get("RANK", "0")) == 0:
        write_atomic(args.run_dir / REPORT, report.model_dump_json(indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
