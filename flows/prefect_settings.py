"""The Prefect settings this project runs with, set in one place before Prefect is imported.

Prefect reads its settings once, when it is first imported, so every entry point calls
:func:`apply_prefect_settings` before importing anything that imports Prefect (``kp20k build``,
``kp20k train`` / ``evaluate``). The same variables are exported by ``infra/local-stack.sh`` and set
in ``infra/worker.Dockerfile`` (``tests/flows/test_prefect_settings.py`` checks that they agree).
Values already in the environment win: a user may turn anything back on.
"""

from __future__ import annotations

import os

# Telemetry off: the server's heartbeat to Prefect's analytics service logged an ERROR on every
# offline run (it also raced the ephemeral API for its SQLite database), and client-side usage events
# go nowhere a build needs.
TELEMETRY_OFF: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

PREFECT_ENV: dict[str, str] = {
    **TELEMETRY_OFF,
    # Prefect's ephemeral API migrates a fresh database first: on a busy 2-core machine that takes
    # longer than its default 20 s start-up limit.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_prefect_settings() -> None:
    """Set :data:`PREFECT_ENV` in this process's environment where not already set."""
    for name, value in PREFECT_ENV.items():
        os.environ.setdefault(name, value)
