"""Several Ray nodes on this machine (ray.cluster_utils.Cluster, everything on 127.0.0.1), the simulated task.

- node_loss_redone_epochs: training thrown away per trial that was running on a worker node removed without
  notice, in epochs: the time from its last checkpointed epoch to the loss, plus any checkpointed epochs its
  restart did not resume from; target <= 1;
- node_drain_redone_epochs: the same for a node that is drained first (a preemption notice, the GCS call the
  autoscaler makes): its trials checkpoint and move before it goes; target 0;
- node_loss_recovery_s: seconds from the node's removal to the first epoch a moved trial logs again;
- multinode_slot_efficiency: the same 8-trial sweep on a head + 2 worker nodes of one CPU each, against one node
  with the same two CPUs: wall time of one node / wall time of three (1.0: the extra nodes cost nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Result

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SPEC = """name: nodes
task: simulated
datasets: [{name: synthetic, id: a}, {name: synthetic, id: b, options: {seed: 1}}]
backbones: [{name: test_resnet, weights: random}]
methods: [linear, bitfit]
image_size: 16
train: {epochs: EPOCHS, epoch_seconds: 1.0}
search: {sampler: grid, trials_per_cell: 2}
scheduler: {type: fifo}
resources: {cpus_per_trial: 0.5}
"""


def _cluster(workers: int, cpus: int):
    from ray.cluster_utils import Cluster

    os.environ.update(LOOPBACK)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "resources": {"medpeft_driver": 64},
        "include_dashboard": False, "object_store_memory": 96 * 2**20})
    nodes = [cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", object_store_memory=96 * 2**20)
             for _ in range(workers)]
    return cluster, nodes


def _runs(storage: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nodes")
    return client, ([] if experiment is None else
                    client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=100))


def _sweep(folder: Path, epochs: int, address: str | None) -> subprocess.Popen:
    """The launcher on the cluster at `address`, or on a local Ray of 2 CPUs (one node) when None."""
    spec = folder / "nodes.yaml"
    text = SPEC.replace("EPOCHS", str(epochs))
    spec.write_text(text if address else text.replace("{cpus_per_trial: 0.5}", "{cpus_per_trial: 0.5, num_cpus: 2}"))
    where = ["--address", address] if address else []
    return subprocess.Popen([sys.executable, "-m", "sweep.launch", "--config", str(spec), "--storage",
                             str(folder / "store"), *where], cwd=REPO, env={**os.environ, **LOOPBACK},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def node_loss(epochs: int, drain: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cluster, nodes = _cluster(2, 1)
        try:
            proc = _sweep(folder, epochs, cluster.address)
            victim, lost = nodes[0], {}
            deadline = time.monotonic() + 300
            while not lost and time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    _, runs = _runs(folder / "store")
                except Exception:  # not created yet
                    continue
                lost = {r.data.tags["trial_key"]: int(r.data.metrics.get("epoch", 0)) for r in runs
                        if r.data.tags.get("node") == victim.node_id and r.data.tags.get("status") == "running"
                        and r.data.metrics.get("epoch", 0) >= 2}
            removed = time.time()
            if drain:
                _drain(cluster.address, victim.node_id)
                _wait_moved(folder / "store", set(lost), victim.node_id)
                cluster.remove_node(victim)
            else:
                cluster.remove_node(victim, allow_graceful=False)
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=96 * 2**20)
            proc.wait(600)
            client, runs = _runs(folder / "store")
            by_key = {r.data.tags["trial_key"]: r for r in runs}
            redone, back = [], []
            for key in lost:
                run = by_key[key]
                history = sorted(client.get_metric_history(run.info.run_id, "epoch"), key=lambda m: m.step)
                resumed = int(run.data.tags.get("resumed_from_epoch", 0))
                before = [m for m in history if m.timestamp / 1000 <= removed]
                checkpointed = before[-1].step if before else 0
                # A drained trial trains on until it has checkpointed an epoch and then leaves: nothing is lost.
                # A killed one loses what it did since its last epoch ended.
                partial = 0.0 if drain or not before else (removed - before[-1].timestamp / 1000) / 1.0
                redone.append(round(max(0, checkpointed - resumed) + min(partial, 1.0), 2))
                later = [m.timestamp / 1000 for m in history if m.timestamp / 1000 > removed]
                if later:
                    back.append(later[0] - removed)
            return {"trials_lost": len(lost), "redone": redone, "recovery_s": back, "exit": proc.returncode}
        finally:
            cluster.shutdown()


def _drain(address: str, node_id: str) -> None:
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    accepted, why = GcsClient(address=address).drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "spot interruption",
        int(time.time() * 1000) + 120_000)
    if not accepted:
        raise RuntimeError(f"drain refused: {why}")


def _wait_moved(storage: Path, keys: set[str], node_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, runs = _runs(storage)
        if all(r.data.tags.get("node") != node_id for r in runs if r.data.tags["trial_key"] in keys):
            return
        time.sleep(0.5)


def wall_seconds(epochs: int, nodes: bool) -> float:
    """Wall time of the sweep on a head + 2 worker nodes of one CPU (`nodes`), or on one local node of 2 CPUs."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = _cluster(2, 1)[0] if nodes else None
        try:
            started = time.monotonic()
            _sweep(Path(tmp), epochs, cluster.address if cluster else None).wait(600)
            return time.monotonic() - started
        finally:
            if cluster:
                cluster.shutdown()


def run(quick: bool = False) -> list[Result]:
    epochs = 6 if quick else 10
    loss, drained = node_loss(epochs), node_loss(epochs, drain=True)
    redone = max(loss["redone"]) if loss["redone"] else None
    recovery = max(loss["recovery_s"]) if loss["recovery_s"] else None
    one, three = wall_seconds(epochs, nodes=False), wall_seconds(epochs, nodes=True)
    return [
        Result(key="node_loss_redone_epochs", value=redone, target="<= 1",
               ours=f"{loss['trials_lost']} trials on a worker node removed without notice; epochs redone per trial "
                    f"{loss['redone']}; sweep exit {loss['exit']}",
               baseline="0: a trial that loses nothing"),
        Result(key="node_drain_redone_epochs", value=max(drained["redone"]) if drained["redone"] else None,
               target="0", ours=f"{drained['trials_lost']} trials on a drained node (preemption notice); epochs "
                                f"lost per trial {drained['redone']}; sweep exit {drained['exit']}",
               baseline="0: a trial that loses nothing"),
        Result(key="node_loss_recovery_s", value=recovery, target="-",
               ours=f"seconds from the node's removal to each moved trial's next logged epoch: "
                    f"{[round(s, 1) for s in loss['recovery_s']]}",
               baseline="the epoch time (1 s)"),
        Result(key="multinode_slot_efficiency", value=one / three, target=">= 0.9",
               ours=f"8 trials x {epochs} epochs on a head + 2 worker nodes of 1 CPU: {three:.0f} s",
               baseline=f"the same sweep on one local node of 2 CPUs: {one:.0f} s"),
    ]
