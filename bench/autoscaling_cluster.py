"""cluster.yaml's node types under Ray's real autoscaler, on one machine.

Ray's fake multinode provider (ray.autoscaler._private.fake_multi_node.node_provider) makes a worker "node" a raylet
on this machine that the autoscaler itself launches and terminates; its GPUs are labels, so GPU node types work on
a CPU machine. The head is started as `ray up` starts it (autoscaler v2, `ray start --head
--autoscaling-config=...`) with `RAY_FAKE_CLUSTER=1`, on loopback. Facts from Ray 2.60's wheel that shape this:
the wheel lacks fake_multi_node/example.yaml, so the provider is named as `type: external` with its module (which
takes its defaults from code) rather than `type: fake_multinode`; the head's node type must be `ray.head.default`;
and ray.cluster_utils.AutoscalingCluster runs `ray stop --force` (every Ray on the machine), so it is not used:
every process of this cluster is found by its temporary folder and killed by process id.

Used by tests/test_autoscaler.py and `python -m bench --only autoscale`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.ray_processes import processes as _processes

REPO = Path(__file__).resolve().parents[1]
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# The same environment for every process that talks to this cluster: Ray keeps 127.0.0.1 (it would take the
# host's address otherwise), and without token authentication (Ray 2.60 turns it on for `ray start`; the token
# would be one file in the home folder shared by every Ray on the machine).
CLIENT_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_config(cluster_yaml: dict, gcs_address: str, max_workers: dict[str, int], idle_timeout_minutes: float,
                object_store_bytes: int) -> dict:
    """cluster.yaml's node types for the fake provider: the worker types with their names and resources (GPUs
    included), min_workers 0 and max_workers capped (`max_workers`: type -> count; types not named get 0); the
    head as `ray.head.default` with the head type's resources. Nothing of the cloud (node_config, setup and start
    commands, Docker, file mounts) applies to raylets on this machine."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FAKE_HEAD_NODE_TYPE

    types = cluster_yaml["available_node_types"]
    head = types[cluster_yaml["head_node_type"]]
    nodes = {FAKE_HEAD_NODE_TYPE: {"resources": copy.deepcopy(head["resources"]), "node_config": {},
                                   "max_workers": 0}}
    for name, node in types.items():
        if name == cluster_yaml["head_node_type"]:
            continue
        # The provider hands `object_store_memory` to the raylet it starts (a setting, not a schedulable resource):
        # each fake node would otherwise take 30% of this machine's memory for its object store.
        nodes[name] = {"resources": {**node["resources"], "object_store_memory": object_store_bytes},
                       "node_config": {}, "min_workers": 0, "max_workers": max_workers.get(name, 0)}
    return {
        "cluster_name": "medpeft-fake",
        "max_workers": sum(max_workers.values()),
        "upscaling_speed": cluster_yaml.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": gcs_address,
                     "head_node_id": FAKE_HEAD_NODE_ID, "launch_multiple": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True, "use_node_id_as_ip": True},
        "auth": {},
        "available_node_types": nodes,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class FakeAutoscalingCluster:
    """A head (no CPU, the driver resource) whose autoscaler launches cluster.yaml's worker types as local raylets.

    Every process of it carries its temporary folder on its command line or descends from one that does; that is
    how `kill_node` and `shutdown` find them, never by name (other Rays on this machine are not ours)."""

    def __init__(self, max_workers: dict[str, int], idle_timeout_s: float = 6.0,
                 object_store_bytes: int = 80 * 2**20) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))  # short: Ray's socket paths live in it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
        self.config = fake_config(cluster, self.address, max_workers, idle_timeout_s / 60, object_store_bytes)
        self.config_path = self.temp / "autoscaling.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.head_resources = cluster["available_node_types"][cluster["head_node_type"]]["resources"]
        self.object_store_bytes = object_store_bytes

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that uses this cluster (the launcher)."""
        return {**os.environ, **CLIENT_ENV}

    def start(self) -> None:
        import json

        from ray.autoscaler._private.fake_multi_node.node_provider import (
            FAKE_HEAD_NODE_ID,
            FAKE_HEAD_NODE_TYPE,
        )

        env = {**self.env,
               "RAY_FAKE_CLUSTER": "1",
               # What `ray up` gives the head's `ray start` (autoscaler v2 is its default since Ray 2.50) and what
               # the fake provider expects of its head.
               "RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
               "RAY_NODE_TYPE_NAME": FAKE_HEAD_NODE_TYPE, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
               # The autoscaler looks every second (5 s by default). Ray's health checks keep their defaults (a
               # node is dead after 5 missed checks 3 s apart): shorter ones declare live nodes of a loaded
               # 2-core machine dead.
               "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        head = self.head_resources
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
        # --block: `ray start` stays, the parent of the head's processes and (through the autoscaler) of every
        # node's. Other test sessions on this machine clean up orphaned Ray processes; a cluster under a live
        # process of ours is not theirs to end.
        self.log = open(self.temp / "ray-start.log", "w")  # noqa: SIM115 (closed in shutdown)
        self.head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={self.port}",
             "--node-ip-address=127.0.0.1", f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}",
             f"--resources={json.dumps(custom)}", f"--autoscaling-config={self.config_path}",
             f"--temp-dir={self.temp}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}",
             f"--object-store-memory={self.object_store_bytes}", "--disable-usage-stats"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        def up() -> bool:
            if self.head.poll() is not None:
                raise Ended
            return self.status() is not None

        if not wait_until(up, timeout=180):
            raise RuntimeError(f"ray start --head failed:\n{(self.temp / 'ray-start.log').read_text()[-3000:]}")

    def status(self):
        """The autoscaler's view (ray.autoscaler.v2.sdk): nodes by state, pending launches, demands."""
        from ray.autoscaler.v2.sdk import get_cluster_status

        return get_cluster_status(self.address)

    def workers(self) -> dict[str, str]:
        """node id -> node type of every worker node alive now (running trials or idle)."""
        status = self.status()
        return {n.node_id: n.ray_node_type_name for n in [*status.active_nodes, *status.idle_nodes]
                if n.ray_node_type_name in self.config["available_node_types"]
                and n.ray_node_type_name != self.config["head_node_type"]}

    def kill_node(self, node_id: str) -> set[int]:
        """A spot instance gone without notice: the node's raylet and every process under it (its workers, the
        trials' actors, its agents) SIGKILLed at once. Returns the process ids killed."""
        table = _processes()
        raylets = {pid for pid, (_, command) in table.items()
                   if "raylet/raylet" in command and f"--node_id={node_id}" in command
                   and str(self.temp) in command}
        if not raylets:
            alive = [re.findall(r"--node_id=(\w+)", command) for command in
                     (table[p][1] for p in self.processes() if p in table) if "raylet/raylet" in command]
            raise LookupError(f"no raylet of node {node_id} in this cluster (raylets alive: {alive}; "
                              f"the autoscaler sees {self.workers()})")
        pids = _with_descendants(raylets, table)
        _kill(pids)
        return pids

    def events(self) -> list[str]:
        """The autoscaler's decisions as it logged them ("Adding 2 node(s) of type ...", "Removing 1 nodes of type
        ... (idle)."), oldest first."""
        lines = []
        for log in sorted(self.temp.glob("session_2*/logs/monitor.log")):  # not session_latest, its link
            lines += [line for line in log.read_text(errors="replace").splitlines()
                      if "Adding " in line or "Removing " in line]
        return lines

    def processes(self) -> set[int]:
        table = _processes()
        roots = {pid for pid, (_, command) in table.items() if str(self.temp) in command}
        if getattr(self, "head", None) is not None:
            roots.add(self.head.pid)
        return _with_descendants(roots & set(table), table)

    def shutdown(self) -> None:
        """Every process of this cluster killed by id (a few rounds: the autoscaler may be starting a node)."""
        for _ in range(5):
            pids = self.processes()
            if not pids - {os.getpid()}:
                break
            _kill(pids)
            time.sleep(0.5)
        if getattr(self, "head", None) is not None:
            self.head.wait(10)
            self.log.close()
        if not os.environ.get("MEDPEFT_KEEP_RAY_LOGS"):  # set it to read Ray's logs of a run afterwards
            shutil.rmtree(self.temp, ignore_errors=True)


class Ended(Exception):
    """What is waited for can no longer come (the sweep exited)."""


def wait_until(condition, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Ended:
            return False
        except Exception:  # the cluster or the store may not answer yet
            pass
        time.sleep(every)
    return False


SPEC = """name: autoscale
task: simulated
datasets: [{{name: synthetic, id: a}}]
backbones: [{{name: test_resnet, weights: random}}]
methods: [linear, bitfit]
image_size: 16
train: {{epochs: {epochs}, epoch_seconds: {epoch_seconds}}}
search: {{sampler: grid, trials_per_cell: 4}}
scheduler: {{type: fifo}}
# Half a GPU each: two trials per gpu_small_spot node, four at once on the two nodes allowed, eight in all, so
# trials still wait when a node is lost (its replacement is needed). The cluster starts with no GPU, so the launcher
# is told how many trials to keep going (README, "On a cluster"); the autoscaler adds nodes for them.
resources: {{cpus_per_trial: 0.5, gpus_per_trial: 0.5, max_concurrent_trials: 4}}
"""
NODE_TYPE = "gpu_small_spot"


def trial_runs(storage: Path, name: str = "autoscale") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000)


def epoch_history(storage: Path, run_id: str) -> list[tuple[int, float]]:
    """(epoch, time logged in seconds) of every epoch a trial logged, in order."""
    from mlflow import MlflowClient

    history = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").get_metric_history(run_id, "epoch")
    return sorted((int(m.step), m.timestamp / 1000) for m in history)


def spot_loss_sweep(folder: Path, epochs: int = 6, epoch_seconds: float = 1.0, timeout: float = 240) -> dict:
    """A simulated sweep (8 trials of half a GPU, 4 at once) on a fake autoscaling cluster that starts with no worker; once
    trials run, the busiest worker node is killed without notice. Returns what was seen: the node types the
    autoscaler launched, the lost node and its trials (key -> last epoch logged), the replacement, the MLflow runs,
    the autoscaler's events, whether the idle workers went, and what was left running."""
    cluster = FakeAutoscalingCluster(max_workers={NODE_TYPE: 2})
    storage = folder / "store"
    spec = folder / "autoscale.yaml"
    spec.write_text(SPEC.format(epochs=epochs, epoch_seconds=epoch_seconds))
    seen: dict = {"epochs": epochs, "epoch_seconds": epoch_seconds, "storage": storage}
    sweep = None
    try:
        cluster.start()
        seen["workers_at_start"] = cluster.workers()
        with open(folder / "launcher.log", "w") as log:
            sweep = subprocess.Popen(
                [sys.executable, "-m", "sweep.launch", "--config", str(spec), "--storage", str(storage),
                 "--address", cluster.address], cwd=REPO, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        launched: dict[str, str] = {}
        busy: dict = {}

        def a_worker_trains() -> bool:
            if sweep.poll() is not None:
                raise Ended
            launched.update(cluster.workers())
            on = {}
            for run in trial_runs(storage):
                if run.data.tags.get("status") == "running" and run.data.metrics.get("epoch", 0) >= 2:
                    on.setdefault(run.data.tags.get("node"), {})[run.data.tags["trial_key"]] = \
                        int(run.data.metrics["epoch"])
            on = {node: trials for node, trials in on.items() if node in launched}
            if on:
                node = max(on, key=lambda n: len(on[n]))
                busy.update(node=node, trials=on[node])
            return bool(on)

        if not wait_until(a_worker_trains, timeout):
            raise RuntimeError(f"no trial got going on a launched worker (launcher exit {sweep.poll()}, "
                               f"{len(cluster.processes())} cluster processes alive):\n{_tail(folder / 'launcher.log')}")
        seen["launched_before_loss"] = dict(launched)
        seen["lost_node"], seen["lost_trials"] = busy["node"], busy["trials"]
        seen["lost_at"] = time.time()
        cluster.kill_node(busy["node"])
        replacement: dict = {}

        def replaced() -> bool:
            if sweep.poll() is not None:
                raise Ended
            fresh = {n: t for n, t in cluster.workers().items() if n not in launched}
            replacement.update(fresh)
            return bool(fresh)

        seen["replaced"] = wait_until(replaced, timeout)
        seen["replacement"] = dict(replacement)
        seen["replaced_at"] = time.time()
        try:
            seen["exit"] = sweep.wait(timeout)
        except subprocess.TimeoutExpired:
            seen["exit"] = None
        seen["ended_at"] = time.time()
        seen["launcher_output"] = _tail(folder / "launcher.log", 6000)
        seen["idle_removed"] = wait_until(lambda: not cluster.workers(), timeout=60)
        seen["events"] = cluster.events()
        seen["runs"] = trial_runs(storage)
        seen["histories"] = {r.data.tags["trial_key"]: epoch_history(storage, r.info.run_id) for r in seen["runs"]}
    finally:
        if sweep is not None and sweep.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
        cluster.shutdown()
        time.sleep(1)
        seen["left_behind"] = cluster.processes()
    return seen


def redone_epochs(seen: dict) -> dict[str, float]:
    """Training thrown away per trial of the lost node, in epochs: the checkpointed epochs its restart did not
    resume from, plus the part of the epoch in progress when the node went (time since its last logged epoch)."""
    out = {}
    by_key = {r.data.tags["trial_key"]: r for r in seen["runs"]}
    for key in seen["lost_trials"]:
        history = seen["histories"][key]
        before = [(epoch, at) for epoch, at in history if at <= seen["lost_at"]]
        last_epoch, last_at = before[-1] if before else (0, seen["lost_at"])
        resumed = int(by_key[key].data.tags.get("resumed_from_epoch", 0))
        partial = min(1.0, (seen["lost_at"] - last_at) / seen["epoch_seconds"])
        out[key] = round(max(0, last_epoch - resumed) + partial, 2)
    return out


def replacement_first_epoch_s(seen: dict) -> float | None:
    """Seconds from the loss to the first epoch a trial logged on the replacement node."""
    on_replacement = [r.data.tags["trial_key"] for r in seen["runs"] if r.data.tags.get("node") in seen["replacement"]]
    times = [at for key in on_replacement for _, at in seen["histories"][key] if at > seen["lost_at"]]
    return round(min(times) - seen["lost_at"], 1) if times else None


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
