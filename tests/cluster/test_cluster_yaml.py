"""cluster.yaml passes the Ray cluster launcher's own checks (no cloud calls) and says
what the runner relies on: CPU and GPU worker types, the placement resource, installs."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from clipcurate.pipelines.runner import CPU_NODE_RESOURCE

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_launcher_config(config):
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before any cloud call
    validate_config(prepared)  # Ray's JSON schema plus its own consistency checks
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    # setup_commands are merged into the per-role lists `ray up` runs
    assert any("pip install -e ~/clipcurate" in c for c in prepared["worker_setup_commands"])


def test_a_broken_config_is_rejected_by_the_same_check(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resources"] = {"curate_gpu": "one"}
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validate_config(prepare_config(broken))


def test_node_types_separate_cpu_and_gpu_work(config):
    types = config["available_node_types"]
    cpu, gpu, head = types["cpu_worker"], types["gpu_worker"], types["head"]
    assert cpu["resources"].get(CPU_NODE_RESOURCE, 0) >= 1
    assert CPU_NODE_RESOURCE not in gpu["resources"] and CPU_NODE_RESOURCE not in head["resources"]
    assert gpu["resources"].get("curate_gpu") == 1
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # an AWS GPU instance family
    assert not cpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert head["resources"] == {"CPU": 0}


def test_setup_installs_this_project_with_the_tested_torch(config):
    commands = " ".join(config["setup_commands"])
    assert f"torch=={importlib.metadata.version('torch')}" in commands
    assert f"torchvision=={importlib.metadata.version('torchvision')}" in commands
    assert f"ray[data,default]=={importlib.metadata.version('ray')}" in commands
    (remote, local), = config["file_mounts"].items()
    assert local == "." and f"pip install -e {remote}" in commands
