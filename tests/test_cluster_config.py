"""cluster.yaml as `ray up` prepares it, the README's cluster commands as Ray's CLI parses them, and k8s/ as
KubeRay's autoscaler translates it and as Kubernetes validates its pod templates; all offline. What the README
says about the cluster is checked against the file."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from trainables.trainable import DRIVER_RESOURCE

REPO = Path(__file__).resolve().parents[1]
WORKERS_IN_README = {"gpu_small_spot": "one GPU", "gpu_multi_spot": "four GPUs"}


def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def readme_cluster_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## On a cluster"):text.index("\n## ", text.index("## On a cluster") + 1)]


def test_cluster_yaml_as_ray_up_prepares_it():
    config = cluster_yaml()
    # What `ray up` does before it calls AWS (ray.autoscaler._private.commands._bootstrap_config): the provider's
    # defaults merged in, setup commands merged, the Docker section checked, per-type worker bounds filled, then
    # Ray's schema. (The AWS provider's own bootstrap needs an account and is not run.)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0  # filled in by Ray: the head type is never scaled
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert head["resources"][DRIVER_RESOURCE] > 0
    assert "InstanceMarketOptions" not in head["node_config"]  # on demand
    workers = worker_types(prepared)
    assert set(workers) == set(WORKERS_IN_README)
    for node in workers.values():
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node["min_workers"] == 0 and node["max_workers"] > 0
        assert node["resources"]["GPU"] >= 1 and node["resources"]["CPU"] >= 1
        assert DRIVER_RESOURCE not in node["resources"]  # drivers never on spot
    assert sum(n["max_workers"] for n in workers.values()) <= prepared["max_workers"]
    # The setup Ray runs on every node (merged into each node type's by prepare_config): the package installed.
    assert any("pip install" in c and re.search(r"install( --\S+)* \.$", c) for c in prepared["setup_commands"])
    assert any(opt.startswith("--shm-size") for opt in prepared["docker"]["run_options"])


def test_the_head_has_no_cpu_for_trials_on_every_provider():
    """Only cloud providers apply a node type's `resources` to the node; the head's own `ray start` must say it
    (the local provider, an on-premise head). Same driver resource in both places."""
    config = cluster_yaml()
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    args = shlex.split(start)
    assert "--num-cpus=0" in args and "--num-gpus=0" in args
    (resources,) = [a.removeprefix("--resources=") for a in args if a.startswith("--resources=")]
    assert json.loads(resources) == {DRIVER_RESOURCE: head[DRIVER_RESOURCE]}
    assert "--dashboard-host=127.0.0.1" in args
    started = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in started and "postgresql://" in started and "--artifacts-destination s3://" in started


def test_the_settings_reach_the_nodes_explicitly():
    """Ray passes none of the laptop's environment to the nodes: every command that reads $MEDPEFT_BUCKET on a
    node sources the env file that file_mounts puts there, whose example defines it."""
    config = cluster_yaml()
    mounts = config["file_mounts"]
    env_file = next(remote for remote, local in mounts.items() if local == "./cluster.env")
    assert "/cluster.env" in (REPO / ".gitignore").read_text().split()  # the user's settings stay theirs
    example = (REPO / "cluster.env.example").read_text()
    assert re.search(r"^MEDPEFT_BUCKET=\S+", example, re.M)
    commands = [c for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands",
                              "worker_start_ray_commands") for c in config[key]]
    for command in commands + readme_commands_run_on_the_head():
        if "$MEDPEFT_BUCKET" in command:
            assert f". {env_file}" in command, command


def rsync_excludes(path: str, pattern: str) -> bool:
    """Whether rsync's `--exclude PATTERN` keeps `path` (relative to the transfer's root) out, by rsync's rules for
    these patterns: one with a leading "/" matches from the root, one without a "/" matches any single part of the
    path (an excluded folder takes everything under it), "**/" matches any depth."""
    parts = path.split("/")
    if pattern.startswith("/"):
        return any(fnmatch.fnmatch("/".join(parts[:i]), pattern[1:]) for i in range(1, len(parts) + 1))
    pattern = pattern.removeprefix("**/")
    assert "/" not in pattern, f"no rule here for rsync pattern {pattern!r}"
    return any(fnmatch.fnmatch(part, pattern) for part in parts)


def test_every_file_mount_reaches_the_nodes_whole():
    """Ray hands `rsync_exclude` to the rsync of every file mount (command_runner._create_rsync_filter_args): the
    project's folder and the single env file alike. A pattern meant for the checkout's own results/ that also
    matched sweep/results/ left a package out of what `pip install .` builds on the nodes, and one naming
    cluster.env kept the bucket off them (tests/test_ray_up.py found both)."""
    config = cluster_yaml()
    shipped = ["pyproject.toml", "README.md"] + [
        p.relative_to(REPO).as_posix() for package in ("sweep", "trainables", "search_spaces")
        for p in (REPO / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for remote, local in config["file_mounts"].items():
        # A folder's content is synced into the remote folder (its own root); a file is its own root.
        paths = shipped if (REPO / local).is_dir() else [Path(local).name]
        for pattern in config["rsync_exclude"]:
            kept_out = [p for p in paths if rsync_excludes(p, pattern)]
            assert not kept_out, f"rsync_exclude {pattern!r} keeps {kept_out[:5]} off the nodes ({remote})"
    # What the patterns are there for still stays behind.
    for left in (".venv/bin/python", "results/quickstart/mlflow.db", ".git/HEAD", "sweep/__pycache__/x.pyc"):
        assert any(rsync_excludes(left, p) for p in config["rsync_exclude"]), left


def test_images_are_pinned_to_the_tested_ray():
    config = cluster_yaml()
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_pin,) = [d for d in pinned if d.startswith("ray[")]
    minor = ".".join(ray.__version__.split(".")[:2])
    assert f">={minor}" in ray_pin and f"<{minor.split('.')[0]}.{int(minor.split('.')[1]) + 1}" in ray_pin
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in (REPO / "Dockerfile").read_text()
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1 and re.fullmatch(r"ami-[0-9a-f]{8,17}", images.pop())  # not Ray's `latest_dlami`
    for manifest in ("raycluster.yaml", "rayjob.yaml"):
        assert f'rayVersion: "{ray.__version__}"' in (REPO / "k8s" / manifest).read_text()
    assert f"Ray {minor}" in readme_cluster_section()


def readme_ray_commands() -> list[list[str]]:
    """The `ray ...` commands of the README's cluster section, as argument lists (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_cluster_section(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("ray ") and "cluster.yaml" in line:
                commands.append(shlex.split(line))
    return commands


def readme_commands_run_on_the_head() -> list[str]:
    return [args[-1] for args in readme_ray_commands() if args[1] == "exec"]


def test_the_readmes_ray_commands_parse_as_rays_cli_reads_them():
    """Each command through Ray's own click CLI, parsed and not run: unknown options or subcommands fail here.
    `ray submit` would upload a local script file and run it with python, so the sweep is started with
    `ray exec --tmux`, and its command starts the installed tool."""
    from ray.scripts.scripts import cli

    commands = readme_ray_commands()
    assert {c[1] for c in commands} >= {"up", "exec", "attach", "down"}
    assert not [c for c in commands if c[1] == "submit"]
    for args in commands:
        command = cli.commands[args[1]]
        command.make_context(args[1], args[2:])  # raises click's UsageError on anything it does not take
    (exec_args,) = [c for c in commands if c[1] == "exec"]
    assert "--tmux" in exec_args
    assert "medpeft-sweep launch" in exec_args[-1] and "--storage s3://$MEDPEFT_BUCKET/" in exec_args[-1]
    assert any(c[1] == "attach" and "--tmux" in c for c in commands)


def test_the_readme_describes_the_node_types_as_the_file_sets_them():
    config = cluster_yaml()
    section = " ".join(readme_cluster_section().split())  # as read, not as wrapped
    for name, node in worker_types(config).items():
        described = (f"`{node['node_config']['InstanceType']}` (`{name}`: {node['resources']['CPU']} CPUs, "
                     f"{WORKERS_IN_README[name]}, spot, 0 to {node['max_workers']} nodes)")
        assert described in section, described
        gpus = {"one GPU": 1, "four GPUs": 4}[WORKERS_IN_README[name]]
        assert node["resources"]["GPU"] == gpus
    head = config["available_node_types"][config["head_node_type"]]
    assert f"`{head['node_config']['InstanceType']}`" in section and "on demand" in section
    assert f"`{DRIVER_RESOURCE}`" in section


def test_a_broken_cluster_yaml_is_rejected():
    config = cluster_yaml()
    config["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):  # jsonschema's ValidationError
        validate_config(prepare_config(config))


# ---- KubeRay --------------------------------------------------------------------------------------------------


def kuberay_clusters() -> dict[str, dict]:
    """Both manifests' RayCluster specs, as RayCluster custom resources (the RayJob embeds one)."""
    cluster = yaml.safe_load((REPO / "k8s" / "raycluster.yaml").read_text())
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    as_cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
             "metadata": {"name": job["metadata"]["name"], "namespace": "default"},
             "spec": job["spec"]["rayClusterSpec"]}
    cluster["metadata"].setdefault("namespace", "default")
    return {"raycluster.yaml": cluster, "rayjob.yaml": as_cr}


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_translation_agrees_with_cluster_yaml(manifest):
    """KubeRay's autoscaler derives its node types from the RayCluster (ray.autoscaler._private.kuberay); they
    must be cluster.yaml's: the same worker groups (k8s names take hyphens), CPUs, GPUs and bounds, and the driver
    resource on the head only."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    derived = _derive_autoscaling_config_from_ray_cr(kuberay_clusters()[manifest])
    types = derived["available_node_types"]
    head = types.pop(derived["head_node_type"])
    config = cluster_yaml()
    ours_head = config["available_node_types"][config["head_node_type"]]["resources"]
    assert head["resources"]["CPU"] == ours_head["CPU"] == 0
    assert head["resources"].get("GPU", 0) == ours_head["GPU"]
    assert head["resources"][DRIVER_RESOURCE] == ours_head[DRIVER_RESOURCE]
    ours = worker_types(config)
    assert {name.replace("-", "_") for name in types} == set(ours)
    for name, node in types.items():
        mine = ours[name.replace("-", "_")]
        assert (node["resources"]["CPU"], node["resources"]["GPU"]) == (mine["resources"]["CPU"],
                                                                        mine["resources"]["GPU"]), name
        assert DRIVER_RESOURCE not in node["resources"]
        assert (node["min_workers"], node["max_workers"]) == (mine["min_workers"], mine["max_workers"]), name


def test_kuberay_pod_templates_are_valid_kubernetes():
    """Each group's pod template as the Pod KubeRay makes of it, against the Kubernetes API schema
    (kubernetes-validate, offline, strict: unknown fields fail)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for manifest, cr in kuberay_clusters().items():
        groups = [("head", cr["spec"]["headGroupSpec"])] + [(g["groupName"], g) for g in cr["spec"]["workerGroupSpecs"]]
        for name, group in groups:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"medpeft-{name}"},
                   "spec": group["template"]["spec"]}
            try:
                kubernetes_validate.validate(pod, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{manifest}, group {name}: {e.message}") from None
            container = group["template"]["spec"]["containers"][0]
            if name != "head":
                assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_a_broken_pod_template_is_rejected():
    import kubernetes_validate

    cr = kuberay_clusters()["raycluster.yaml"]
    spec = copy.deepcopy(cr["spec"]["workerGroupSpecs"][0]["template"]["spec"])
    spec["containers"][0]["resources"]["limit"] = spec["containers"][0]["resources"].pop("limits")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec},
                                     kubernetes_validate.latest_version(), strict=True)


def test_the_job_and_the_image_run_the_installed_tool():
    job = yaml.safe_load((REPO / "k8s" / "rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].startswith("medpeft-sweep launch")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install .*\S+medpeft-sweep\s*$", dockerfile, re.M) and " -e " not in dockerfile
