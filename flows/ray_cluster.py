"""Connecting the flow's driver to Ray: a local cluster of this machine's cores, or an existing one.

We call ``ray.init`` ourselves from inside a Prefect task and never use prefect-ray's
``RayTaskRunner`` as well: the two must not be combined (prefect #16228).

A local cluster is loopback-only. Ray 2.60 turns a node address of 127.0.0.1 into the machine's
network address (``services.resolve_ip_for_localhost``), and its gRPC servers (GCS, raylet, every
worker) bind the wildcard address unless the node address is loopback (``GrpcServer``'s
``listen_to_localhost_only``), so ``--node-ip-address=127.0.0.1`` alone changes nothing. Ray's own
switch for single-machine use (what it does on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``)
makes the node address 127.0.0.1 and with it every listening socket loopback; we set it for the
processes of a local cluster only, since a driver joining a real cluster must be reachable from it.

Each local cluster keeps its session folders in its own ``<temp>/kp20k-ray/<driver pid>`` folder, removed
when the cluster is shut down; folders of drivers that died are removed by the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from ray._private import ray_constants
from ray._private.authentication.authentication_token_setup import (
    maybe_enable_token_auth_if_token_available,
)

from flows.liveness import remove_dead_owners
from schemas.errors import ReasonError

# Ray's sockets live under the temp dir and Unix socket paths are limited to ~107 bytes: keep it short.
LOCAL_TEMP_DIR = Path(tempfile.gettempdir()) / "kp20k-ray"
# Every Ray worker process: one BLAS/OpenMP thread, so render workers sharing cores do not oversubscribe.
WORKER_ENV = {"OMP_NUM_THREADS": "1"}
# A local cluster's node address is 127.0.0.1, so every Ray process listens on loopback only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class ClusterError(ReasonError, RuntimeError):
    """Ray could not be reached or started; ``reason`` is a stable code."""


@dataclass(frozen=True)
class RayConnection:
    gcs_address: str
    cpus: float
    owned: bool  # this call started the cluster, so the caller shuts it down
    temp_dir: Path | None = None  # a local cluster's own session folder, removed with it

    def close(self) -> None:
        if self.owned and ray.is_initialized():
            ray.shutdown()
        if self.owned and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def connect(address: str | None = None, num_cpus: int | None = None) -> RayConnection:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``), or start a local one.

    A process already connected keeps its connection (tests start Ray once per session); asking
    such a process for a different cluster is refused rather than silently ignored.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto", "local") and address.removeprefix("ray://") != current:
            raise ClusterError("ray_already_connected", f"this process is connected to {current}, not {address}")
        return RayConnection(current, _cluster_cpus(), owned=False)
    try:
        if address in (None, "local"):
            return _start_local(num_cpus or available_cpus())
        else:
            # Ray 2.60 heads start with token auth on; a driver whose RAY_AUTH_MODE is unset sends no
            # token unless told that one is there (~/.ray/auth_token or RAY_AUTH_TOKEN).
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    except ray.exceptions.AuthenticationError as exc:
        raise ClusterError("ray_auth_failed", f"{address}: {exc} (is ~/.ray/auth_token or RAY_AUTH_TOKEN the cluster's token?)") from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError("ray_unavailable", f"{address or 'local'}: {exc}") from exc
    return RayConnection(ray.get_runtime_context().gcs_address, _cluster_cpus(), owned=True)


def _start_local(num_cpus: int) -> RayConnection:
    remove_dead_owners(LOCAL_TEMP_DIR)  # session folders of builds that were killed
    temp_dir = LOCAL_TEMP_DIR / str(os.getpid())
    temp_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(LOOPBACK_ENV)  # for the Ray processes this driver starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, which imported Ray before the variable was set
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,  # Blender is chatty; its output stays in each worker's log file
        _temp_dir=str(temp_dir),
        runtime_env={"env_vars": {**WORKER_ENV, **LOOPBACK_ENV}},
    )
    return RayConnection(ray.get_runtime_context().gcs_address, _cluster_cpus(), owned=True, temp_dir=temp_dir)


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))
