"""The infra files are real configurations: they parse with the tools' own validators and every entry
point, path and flow they name exists."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"


def load_yaml(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def test_prefect_yaml_validates_and_its_entrypoints_load_the_named_flow():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    model = PrefectYamlModel.model_validate(load_yaml("prefect.yaml"))
    # train-sp4d and evaluate-sp4d deployments are checked in tests/flows/test_triggers.py.
    builds = [d for d in model.deployments if d.entrypoint.startswith("flows/build.py")]
    assert {d.name for d in builds} == {"local", "refresh"}
    for deployment in builds:
        path, function = deployment.entrypoint.split(":")
        assert (REPO_ROOT / path).is_file()
        flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment.entrypoint))
        assert flow.name == "build-kinematicparts20k" and flow.fn.__name__ == function
        assert deployment.work_pool.name == "process"


@pytest.mark.parametrize("entrypoint, flow_name", [("flows/lift.py:lift_rigs", "lift-rigs"), ("flows/fit4d.py:fit_4d", "fit-4d")])
def test_the_lift_and_fit_deployments_load_their_flow_with_parameters_it_takes(entrypoint, flow_name):
    import inspect

    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    model = PrefectYamlModel.model_validate(load_yaml("prefect.yaml"))
    (deployment,) = [d for d in model.deployments if d.entrypoint == entrypoint]
    flow = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    assert flow.name == deployment.name == flow_name and deployment.work_pool.name == "process"
    assert set(deployment.parameters) <= set(inspect.signature(flow.fn).parameters)


def test_prefect_yaml_parameters_are_valid_build_parameters():
    from schemas.params import BuildParams

    for deployment in load_yaml("prefect.yaml")["deployments"]:
        if not deployment["entrypoint"].startswith("flows/build.py"):
            continue
        params = BuildParams.parse(deployment["parameters"])
        assert params.source.kind == "procedural"


def test_refresh_schedule_is_inactive_by_default():
    (refresh,) = [d for d in load_yaml("prefect.yaml")["deployments"] if d["name"] == "refresh"]
    assert [s["active"] for s in refresh["schedules"]] == [False]


def test_ray_cluster_file_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml("ray-cluster.yaml")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert len(config["provider"]["worker_ips"]) == config["max_workers"]


def test_ray_cluster_runs_the_image_built_by_the_worker_dockerfile():
    config = load_yaml("ray-cluster.yaml")
    header = (INFRA / "ray-cluster.yaml").read_text()
    image = config["docker"]["image"]
    assert f"-f infra/worker.Dockerfile -t {image} ." in header
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in commands and "--address=$RAY_HEAD_IP:6379" in commands


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (INFRA / "worker.Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_only_paths_that_exist_and_installs_the_project():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    for op, argument in instructions:
        if op == "COPY":
            *sources, _dest = shlex.split(argument)
            for source in sources:
                assert (REPO_ROOT / source).exists(), source
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "pip install --no-cache-dir ." in runs and "import bpy" in runs
    # The X11/GL client libraries `import bpy` needs (README).
    for library in ("libx11-6", "libxrender1", "libxi6", "libxkbcommon0", "libgl1"):
        assert library in runs


def test_dockerfile_entry_points_exist():
    import json

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    module, function = scripts["kp20k"].split(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    (cmd,) = [json.loads(arg) for op, arg in dockerfile_instructions() if op == "CMD"]
    assert cmd[:3] == ["prefect", "worker", "start"] and cmd[cmd.index("--pool") + 1] == "process"
    assert "kp20k --help" in " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")


def test_dockerfile_runs_everything_after_the_install_as_an_unprivileged_user():
    instructions = dockerfile_instructions()
    users = [i for i, (op, _) in enumerate(instructions) if op == "USER"]
    assert users, "no USER: Blender would open untrusted assets as root"
    last_user = users[-1]
    user = instructions[last_user][1].split(":")[0]
    assert user not in ("root", "0")
    assert [op for op, _ in instructions[last_user + 1 :]] == ["CMD"]  # nothing after it runs as another user
    created = " ".join(arg for op, arg in instructions[:last_user] if op == "RUN")
    match = re.search(rf"useradd\b[^&]*--uid (\d+)[^&]*\b{re.escape(user)}\b", created)
    assert match and int(match.group(1)) >= 1000, "the user must be created with a non-system, non-zero uid"
    # It owns the folders the flows write into, not the code.
    assert re.search(rf"chown {user}:{user} data runs", created)
    assert not re.search(rf"chown -R {user}", created)


def test_local_stack_script_is_valid_bash_with_the_settings_the_spec_names():
    script = INFRA / "local-stack.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in (
        "server start --host 127.0.0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED=false",
        "PREFECT_WORKER_QUERY_SECONDS=1",
        'PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"',
        "work-pool create process --type process",
        "deploy --all --prefect-file infra/prefect.yaml",
        "worker start --pool process",
    ):
        assert needle in text, needle
    assert re.search(r'^cd "\$ROOT"', text, re.M), "deploy must run from the repository root"


@pytest.mark.parametrize("name", ["prefect.yaml", "ray-cluster.yaml"])
def test_yaml_settings_name_only_existing_repository_paths(name):
    text = yaml.safe_dump(load_yaml(name))  # the settings, not the comments
    for path in set(re.findall(r"\b((?:infra|flows|pipelines|schemas)/[\w./-]+\.(?:py|yaml|sh|Dockerfile))\b", text)):
        assert (REPO_ROOT / path).exists(), path
