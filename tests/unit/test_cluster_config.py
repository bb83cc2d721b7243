"""The cluster configs are valid for the tools that read them, have the node groups we rely on, and run
the platform in production with its master key taken from a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from pydantic import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from nexus_ray.config import DEV_MASTER_KEY, Settings
from nexus_ray.runtime.cluster import INGRESS_RULES

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
               "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}


def _load(relative: str) -> dict:
    return yaml.safe_load((ROOT / relative).read_text())


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _load("ray_cluster.yaml")


def test_launcher_config_matches_rays_schema(launcher):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    # What `ray up` does: merge the provider's defaults, then check the result.
    validate_config(prepare_config(launcher))


def test_launcher_has_head_cpu_and_gpu_workers(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = {name: spec for name, spec in types.items() if name != launcher["head_node_type"]}
    gpu = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) >= 1]
    cpu = [spec for spec in workers.values() if not spec["resources"].get("GPU") and spec["resources"].get("CPU")]
    assert gpu and cpu
    assert all(spec["max_workers"] >= 1 for spec in gpu + cpu)
    assert sum(spec.get("min_workers", 0) for spec in workers.values()) <= launcher["max_workers"]


def test_launcher_installs_the_package_and_starts_serve_with_haproxy(launcher):
    assert launcher["file_mounts"]["~/nexus-ray"] == "."
    assert any("pip install -e ~/nexus-ray" in command for command in launcher["setup_commands"])
    head_start = " ".join(launcher["head_start_ray_commands"])
    for name, value in HAPROXY_ENV.items():
        assert f"{name}={value}" in head_start
    for flag in ("ray start --head", "--dashboard-host=0.0.0.0", "--metrics-export-port=8080"):
        assert flag in head_start
    assert "ray start --address=" in " ".join(launcher["worker_start_ray_commands"])


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def test_rayservice_has_head_cpu_and_gpu_groups():
    service = _load("cluster/kuberay/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert isinstance(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"], list)

    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    workers = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert set(workers) == {"cpu", "gpu"}
    assert all(c["resources"]["limits"]["nvidia.com/gpu"] >= 1 for c in _containers(workers["gpu"]))
    assert not any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(workers["cpu"]))
    assert workers["gpu"]["minReplicas"] == 0 <= workers["gpu"]["maxReplicas"]

    for container in _containers(head):
        assert HAPROXY_ENV.items() <= _env(container).items()
    for group in (head, *workers.values()):
        for container in _containers(group):
            assert {"secretRef": {"name": "nexus-stores"}} in container["envFrom"]


def test_rayjob_runs_nexus_status():
    job = _load("cluster/kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"] == "nexus status"
    spec = job["spec"]["rayClusterSpec"]
    assert _containers(spec["headGroupSpec"])
    assert [group["groupName"] for group in spec["workerGroupSpecs"]] == ["cpu"]


# What a process started by `ray start` sees of the settings that guard the secrets.
_PROBE = (
    f"{sys.executable} -c 'import os; "
    'print(os.environ.get("NEXUS_ENVIRONMENT"), os.environ.get("NEXUS_MASTER_KEY") == "k" * 48, '
    'os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"), repr(os.environ.get("FORWARDED_ALLOW_IPS")))\''
)


@pytest.mark.parametrize("commands", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_launcher_nodes_start_in_production_only_with_the_master_key_of_nexus_env(launcher, commands, tmp_path):
    assert launcher["file_mounts"]["~/nexus.env"] == "~/nexus.env"
    assert "NEXUS_MASTER_KEY=" not in (ROOT / "ray_cluster.yaml").read_text()  # never a literal key
    [start] = [c for c in launcher[commands] if "ray start" in c]
    assert "nexus ingress-launcher" in start
    script = start.replace("ray start", _PROBE).replace("nexus ingress-launcher",
                                                         f"{sys.executable} -m nexus_ray.cli ingress-launcher")

    def node_start() -> subprocess.CompletedProcess:
        env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)

    r = node_start()
    assert r.returncode != 0 and "~/nexus.env is missing" in r.stderr
    (tmp_path / "nexus.env").write_text("NEXUS_POSTGRES_URL=postgresql://db.internal/nexus\n")
    r = node_start()
    assert r.returncode != 0 and "NEXUS_MASTER_KEY is not set" in r.stderr
    # Even a file that asks for development gets production: the refusal of development secrets stays on.
    (tmp_path / "nexus.env").write_text(f"NEXUS_ENVIRONMENT=development\nNEXUS_MASTER_KEY={'k' * 48}\n")
    r = node_start()
    assert r.returncode == 0, r.stderr
    environment, has_key, haproxy, forwarded = r.stdout.split()
    assert [environment, has_key, forwarded] == ["production", "True", "''"]
    # Serve starts the launcher that puts the platform's ingress rules into HAProxy's frontend.
    launcher_file = Path(haproxy)
    assert launcher_file == tmp_path / ".nexus" / "haproxy-ingress" and os.access(launcher_file, os.X_OK)
    assert INGRESS_RULES.strip() in launcher_file.read_text().encode().decode("unicode_escape")


def _secret_refs(container: dict) -> dict[str, dict]:
    return {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container.get("env", [])
            if "secretKeyRef" in item.get("valueFrom", {})}


@pytest.mark.parametrize("relative", ["cluster/kuberay/rayservice.yaml", "cluster/kuberay/rayjob.yaml"])
def test_kuberay_pods_run_in_production_with_the_master_key_from_a_secret(relative):
    spec = _load(relative)["spec"]
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    containers = [c for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]) for c in _containers(group)]
    assert containers
    for container in containers:
        environment = _env(container)["NEXUS_ENVIRONMENT"]
        refs = _secret_refs(container)
        # Required (not optional): a pod without the Secret does not start at all.
        assert refs["NEXUS_MASTER_KEY"] == {"name": "nexus-master-key", "key": "NEXUS_MASTER_KEY"}
        assert refs["NEXUS_PREVIOUS_MASTER_KEYS"]["optional"] is True
        literal = [i["name"] for i in container["env"] if "MASTER_KEY" in i["name"] and "value" in i]
        assert literal == []
        # Where HAProxy is the ingress, Serve starts the launcher with the ingress rules (written when the
        # container starts) and uvicorn believes no forwarded header.
        env = _env(container)
        if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            assert env["FORWARDED_ALLOW_IPS"] == ""
            assert container["lifecycle"]["postStart"]["exec"]["command"] == [
                "nexus", "ingress-launcher", env["RAY_SERVE_HAPROXY_BINARY_PATH"]]
        # The environment named is one that refuses the development master key.
        with pytest.raises(ValidationError, match="NEXUS_MASTER_KEY"):
            Settings(environment=environment, master_key=DEV_MASTER_KEY)
