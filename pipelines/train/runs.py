"""Which data a training run reads and which folder it lives in, fixed when the run starts.

``<run_dir>/run.json`` records the dataset pin (Lance URI, samples version, render configuration,
codec and latents version) and the configuration. A restarted run must agree with it, so that
"the latest version" cannot move under a run that resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from pipelines.build.dataset import split_of
from pipelines.build.store import StoreError, open_table, tag_pinned
from pipelines.files import write_atomic
from pipelines.train.checkpoints import DatasetPin, RunError
from pipelines.train.config import TrainConfig
from pipelines.version import code_version

RUN_RECORD = "run.json"
log = logging.getLogger(__name__)


def pin_dataset(lance_uri: str, version: int | None, config_hash: str | None, config: TrainConfig) -> DatasetPin:
    """Resolve the samples version (latest when None) and the render configuration to train on; the
    version is tagged (``pinned-v<N>``) so that no clean-up deletes it.

    ``config_hash`` None takes the only configuration in that version; several are ambiguous (one run
    needs one resolution) and raise ``ambiguous_config``.
    """
    table = open_table(lance_uri, "samples", version)
    rows = table.to_table(columns=["sha256", "config_hash"]).to_pylist()
    hashes = sorted({r["config_hash"] for r in rows})
    if config_hash is None:
        if not hashes:
            raise StoreError("no_samples", f"{lance_uri} samples v{table.version} is empty: build the dataset first")
        if len(hashes) > 1:
            raise StoreError("ambiguous_config", f"{lance_uri} v{table.version} holds render configs {hashes}: pass config_hash")
        config_hash = hashes[0]
    elif config_hash not in hashes:
        raise StoreError("config_not_found", f"no samples with config_hash {config_hash} in v{table.version} (found {hashes})")
    splits = [split_of(r["sha256"], config.val_fraction, config.split_seed) for r in rows if r["config_hash"] == config_hash]
    pin = DatasetPin(
        lance_uri=lance_uri,
        version=table.version,
        config_hash=config_hash,
        n_train=splits.count("train"),
        n_val=splits.count("val"),
    )
    if pin.n_train == 0:
        raise StoreError("no_training_samples", f"every sample of v{pin.version} fell in the validation split (val_fraction={config.val_fraction})")
    try:
        tag_pinned(table)  # a build's clean-up deletes the untagged versions it made on the way
    except (OSError, ValueError) as exc:  # read-only storage: train anyway, and say what it risks
        log.warning("samples v%s not tagged (%s): a later build's clean-up may delete it", pin.version, exc)
    return pin


class RunRecord(BaseModel):
    """``<run_dir>/run.json``: what the run was started with. A restart must agree with it."""

    dataset: DatasetPin
    config: TrainConfig
    code_version: str


def default_run_name(pin: DatasetPin) -> str:
    """One run folder per dataset version and render configuration: a refresh trains a new run."""
    return f"samples-v{pin.version}-{pin.config_hash[:8]}"


def read_run(run_dir: Path) -> RunRecord | None:
    path = Path(run_dir) / RUN_RECORD
    return RunRecord.model_validate_json(path.read_text()) if path.is_file() else None


def locate_run(
    output_dir: str | Path,
    run_name: str | None,
    lance_uri: str,
    version: int | None,
    config_hash: str | None,
    config: TrainConfig,
) -> tuple[Path, DatasetPin, RunRecord | None]:
    """The run folder, its dataset pin, and its record when the run exists already.

    A named run that exists keeps its recorded pin unless the caller asks for a particular version
    or configuration (then :func:`open_run` checks that they agree). An unnamed run is named after the
    pinned version (:func:`default_run_name`), so restarting the same request resumes it.
    """
    if run_name is not None:
        recorded = read_run(Path(output_dir) / run_name)
        if recorded is not None and version is None and config_hash is None and recorded.dataset.lance_uri == lance_uri:
            return Path(output_dir) / run_name, recorded.dataset, recorded
    pin = pin_dataset(lance_uri, version, config_hash, config)
    run_dir = Path(output_dir) / (run_name or default_run_name(pin))
    return run_dir, pin, read_run(run_dir)


def open_run(run_dir: Path, pin: DatasetPin, config: TrainConfig) -> RunRecord:
    """Create ``run.json`` for a new run, or check that a restart matches the recorded one.

    A restart keeps the recorded dataset pin (so "latest" cannot move under a resumed run); only the
    fields in ``RESUMABLE_CHANGES`` (the step budget, logging, workers) may differ.
    """
    recorded = read_run(run_dir)
    if recorded is None:
        record = RunRecord(dataset=pin, config=config, code_version=code_version())
        write_atomic(Path(run_dir) / RUN_RECORD, record.model_dump_json(indent=2))
        return record
    if (recorded.dataset.lance_uri, recorded.dataset.version, recorded.dataset.config_hash) != (pin.lance_uri, pin.version, pin.config_hash):
        raise RunError(
            "dataset_mismatch",
            f"{run_dir} trains on {recorded.dataset.lance_uri} v{recorded.dataset.version} ({recorded.dataset.config_hash}), "
            f"not v{pin.version} ({pin.config_hash}): use another run name",
        )
    changed = config.differences(recorded.config)
    if changed:
        raise RunError("config_mismatch", f"{run_dir} was started with other values of {changed}: use another run name")
    return recorded.model_copy(update={"config": config})
