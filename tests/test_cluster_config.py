"""cluster.yaml passes Ray's own cluster-config schema validation (offline), and the Kubernetes manifests and the
image say what the README says they do."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from trainables.trainable import DRIVER_RESOURCE

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_schema_validation():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before touching AWS
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] > 0 and head["resources"]["CPU"] == 0
    assert "InstanceMarketOptions" not in head["node_config"]  # on demand
    workers = {name: node for name, node in nodes.items() if name != config["head_node_type"]}
    assert len(workers) >= 2
    for node in workers.values():
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node["min_workers"] == 0 and node["max_workers"] > 0
        assert DRIVER_RESOURCE not in node["resources"]  # drivers never on spot
    assert any(opt.startswith("--shm-size") for opt in config["docker"]["run_options"])
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])
    started = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in started and "postgresql://" in started and "--artifacts-destination s3://" in started
    assert DRIVER_RESOURCE in started and "--dashboard-host=127.0.0.1" in started


def test_a_broken_cluster_yaml_is_rejected():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["head"]["not_a_field"] = 1
    try:
        validate_config(prepare_config(config))
    except Exception as e:  # jsonschema's ValidationError
        assert "not_a_field" in str(e)
    else:
        raise AssertionError("Ray's schema accepted an unknown field")


def test_kuberay_manifests():
    cluster = yaml.safe_load((REPO / "k8s" / "raycluster.yaml").read_text())
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        head = spec["headGroupSpec"]["rayStartParams"]
        assert json.loads(json.loads(head["resources"]))[DRIVER_RESOURCE] > 0 and head["num-cpus"] == "0"
        assert head["dashboard-host"] == "127.0.0.1"
        for group in spec["workerGroupSpecs"]:
            container = group["template"]["spec"]["containers"][0]
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert group["minReplicas"] == 0
            assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    assert "python -m sweep.launch" in job["spec"]["entrypoint"]
    assert "pip install" in (REPO / "Dockerfile").read_text() and "-e " in (REPO / "Dockerfile").read_text()
