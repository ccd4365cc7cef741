"""Runs of a flow whose driver died stay Running in Prefect forever: the next run marks them Crashed.

Prefect notices a dead flow run only where something supervises it: a worker marks a run Crashed when
the process it started exits badly, and runs executed by a runner can send heartbeats that an
automation turns into Crashed (zombie detection). A flow called in-process (``kp20k build`` on the
ephemeral API, or a driver killed with SIGKILL) has neither, so each run labels itself with its driver
process (host, pid and start time, :mod:`flows.liveness`) and its table, and a new run of the same flow
on the same table, before it starts work, marks Crashed every earlier Running or Pending run whose
driver process on this host is gone, with its task runs, and says which run replaced it. Runs driven
from another host are left alone: their liveness cannot be judged from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from flows.liveness import ProcessIdentity

DRIVER_LABEL = "kp20k.driver"
TABLE_LABEL = "kp20k.table"
_UNFINISHED = [StateType.RUNNING, StateType.PENDING]


@dataclass(frozen=True)
class DeadRun:
    id: UUID
    name: str
    driver: str

    def __str__(self) -> str:
        return f"{self.name} ({self.id}, driver {self.driver})"


def claim(flow_run_id: UUID, table: str) -> None:
    """Label the current run with its driver process and table, for a later run to judge."""
    with get_client(sync_client=True) as client:
        client.update_flow_run_labels(flow_run_id, {DRIVER_LABEL: str(ProcessIdentity.of_this_process()), TABLE_LABEL: table})


def crash_dead_runs(flow_name: str, table: str, current: UUID, current_name: str) -> list[DeadRun]:
    """Mark Crashed the unfinished runs of ``flow_name`` on ``table`` whose driver on this host is gone."""
    found: list[DeadRun] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_UNFINISHED)),
                id=FlowRunFilterId(not_any_=[current]),
            ),
        )
        for run in runs:
            driver = ProcessIdentity.parse(str(run.labels.get(DRIVER_LABEL, "")))
            if run.labels.get(TABLE_LABEL) != table or driver is None or not driver.on_this_host() or driver.is_alive():
                continue
            message = f"driver process {driver.pid} on {driver.host} is gone; found by run {current_name} ({current}), which resumes its work"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            tasks = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]),
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=_UNFINISHED)),
                )
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            found.append(DeadRun(run.id, run.name, str(driver)))
    return found
