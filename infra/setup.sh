#!/usr/bin/env bash
# Set up the project's virtualenv (.venv) on a fresh machine: every Python dependency in ONE resolver
# run (bpy 5.0.1 pins numpy<2; installing it apart from the rest let numpy be upgraded and broke
# `import bpy`). Safe to run again: it does nothing when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: Python 3.11 is required (bpy 5.0.1 is built for it); found $("$PYTHON" --version 2>&1)." >&2
  echo "setup: set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi

# `import bpy` needs the X11/GL client libraries even headless.
libs="libx11-6 libxrender1 libxfixes3 libxi6 libxkbcommon0 libxcb1 libxext6 libsm6 libice6 libgl1"
if command -v dpkg-query >/dev/null; then
  missing=$(for l in $libs; do dpkg-query -W -f='${Status}\n' "$l" 2>/dev/null | grep -q 'install ok installed' || echo "$l"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing system libraries for bpy: $missing"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
      echo "setup: bpy needs these system libraries; install them with your package manager: $missing" >&2
      exit 1
    fi
  fi
fi

stamp=.venv/.kp20k-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing dependencies into .venv (bpy, torch CPU, prefect, ray, lance: a few minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import bpy, torch, prefect, ray, lance, lancedb, diffusers" || {
  echo "setup: the environment does not import; see the pip output above." >&2
  exit 1
}
echo "$want" > "$stamp"
echo "setup: ready (.venv)"
