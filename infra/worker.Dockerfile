# The worker image: Python 3.11, bpy 5.0.1 and this project. It runs Ray render workers
# (infra/ray-cluster.yaml) and, by default, a Prefect process worker. Build from the repository root:
#
#   docker build -f infra/worker.Dockerfile -t kp20k-worker .
#   docker run --rm -e PREFECT_API_URL=http://<server>:4200/api kp20k-worker
FROM python:3.11-slim-bookworm

# `import bpy` needs the X11/GL client libraries even headless; git for the GitHub fetcher;
# openssh-client and rsync for `ray up`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libx11-6 libxrender1 libxfixes3 libxi6 libxkbcommon0 libxcb1 libxext6 libsm6 libice6 libgl1 \
      git openssh-client rsync \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PREFECT_WORKER_QUERY_SECONDS=1

WORKDIR /opt/kp20k

# Dependencies in their own layer, resolved in one run (bpy pins numpy<2: installing it apart from
# the rest lets a later install upgrade numpy and break `import bpy`). Empty packages stand in for
# the code so that editing the code does not reinstall ~2 GB of wheels.
COPY pyproject.toml README.md ./
RUN mkdir -p schemas pipelines flows models \
 && touch schemas/__init__.py pipelines/__init__.py flows/__init__.py models/__init__.py \
 && pip install --no-cache-dir . \
 && python -c "import bpy, ray, prefect, lance"

COPY schemas ./schemas
COPY pipelines ./pipelines
COPY flows ./flows
COPY models ./models
COPY infra ./infra
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
 && kp20k --help >/dev/null

# Blender opens untrusted assets, so nothing runs as root: an unprivileged user owns its home and the
# data folders the flows write (data/, runs/); the code and the installed packages stay root's,
# read-only to it. A volume mounted for the fetch cache (infra/ray-cluster.yaml) must be writable
# by uid 10001 on the host.
RUN groupadd --system --gid 10001 kp20k \
 && useradd --system --uid 10001 --gid kp20k --create-home --home-dir /home/kp20k --shell /bin/bash kp20k \
 && mkdir -p data runs \
 && chown kp20k:kp20k data runs
USER kp20k

CMD ["prefect", "worker", "start", "--pool", "process", "--type", "process"]
