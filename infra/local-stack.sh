#!/usr/bin/env bash
# A local Prefect stack for this checkout: the server (UI and API on 127.0.0.1), the `process`
# work pool, the deployments of infra/prefect.yaml, and one worker. Ctrl-C stops everything.
#
#   infra/local-stack.sh            # then, in another shell with the same PREFECT_API_URL:
#   prefect deployment run build-kinematicparts20k/local
#
# Environment: PREFECT_PORT (4200), PREFECT_HOME (<repo>/.prefect), PREFECT (the prefect executable).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"  # prefect deploy records this as the runs' working directory

PORT="${PREFECT_PORT:-4200}"
if [[ -z "${PREFECT:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/prefect" ]]; then PREFECT="$ROOT/.venv/bin/prefect"; else PREFECT="$(command -v prefect)"; fi
fi
PYTHON="$(dirname "$PREFECT")/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

# A project-local home: a shared ~/.prefect gives "database is locked" noise between projects.
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1  # telemetry off (flows/prefect_settings.py)
export PREFECT_WORKER_QUERY_SECONDS=1  # the worker polls every second: runs start in ~7 s, not ~13 s
export OMP_NUM_THREADS=1
export RAY_USAGE_STATS_ENABLED=0
mkdir -p "$PREFECT_HOME"

children=()
stop() {
  trap - EXIT INT TERM
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop EXIT INT TERM

echo "local-stack: server on http://127.0.0.1:${PORT} (log: $PREFECT_HOME/server.log)"
"$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
children+=($!)
until "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$PREFECT_API_URL/health" 2>/dev/null; do
  kill -0 "${children[0]}" 2>/dev/null || { echo "local-stack: the server exited; see $PREFECT_HOME/server.log" >&2; exit 1; }
  sleep 1
done

"$PREFECT" work-pool inspect process >/dev/null 2>&1 || "$PREFECT" work-pool create process --type process
"$PREFECT" --no-prompt deploy --all --prefect-file infra/prefect.yaml

echo "local-stack: worker on pool 'process' (log: $PREFECT_HOME/worker.log)"
"$PREFECT" worker start --pool process --type process >"$PREFECT_HOME/worker.log" 2>&1 &
children+=($!)

echo "local-stack: ready. UI http://127.0.0.1:${PORT}; run: PREFECT_API_URL=$PREFECT_API_URL prefect deployment run build-kinematicparts20k/local"
wait -n "${children[@]}"
echo "local-stack: a child exited; stopping" >&2
exit 1
