"""The project's Prefect settings: telemetry off everywhere Prefect runs, so an offline run is quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from flows.prefect_settings import PREFECT_ENV, TELEMETRY_OFF

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    from flows.prefect_settings import apply_prefect_settings
    apply_prefect_settings()  # what every entry point does before Prefect is imported

    from prefect import flow
    from prefect.analytics import is_telemetry_enabled
    from prefect.settings import get_current_settings

    @flow
    def hello() -> int:
        return 42

    print("server analytics:", get_current_settings().server.analytics_enabled)
    print("client telemetry:", is_telemetry_enabled())
    print("result:", hello())
    """
)


def test_an_offline_flow_run_logs_no_analytics_error(tmp_path: Path) -> None:
    """A fresh process with none of the settings in its environment, an ephemeral API, and no route
    out of the machine that it needs: the run completes and nothing is logged about telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in PREFECT_ENV and not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="DEBUG", PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "server analytics: False" in run.stdout and "client telemetry: False" in run.stdout
    assert "result: 42" in run.stdout
    assert not re.search(r"telemetry|analytics|sens-o-matic", run.stderr, re.I), output[-3000:]
    assert not re.search(r"\|\s*ERROR\s*\|", output), output[-3000:]


def test_a_value_the_user_set_wins(monkeypatch) -> None:
    from flows.prefect_settings import apply_prefect_settings

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    apply_prefect_settings()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true" and os.environ["DO_NOT_TRACK"] == "1"


def test_the_local_stack_and_the_worker_image_turn_telemetry_off_too() -> None:
    stack = (REPO_ROOT / "infra" / "local-stack.sh").read_text()
    image = (REPO_ROOT / "infra" / "worker.Dockerfile").read_text()
    for name, value in TELEMETRY_OFF.items():
        assert re.search(rf"^export .*\b{name}={value}\b", stack, re.M), name
        assert re.search(rf"^\s+{name}={value}\b", image, re.M), name
