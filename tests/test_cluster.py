"""The cluster, for real, on one machine: a head that only runs the driver and worker nodes that run the trials,
all on loopback (ray.cluster_utils.Cluster); the launcher attaches with --address; MLflow is a tracking server
on PostgreSQL with S3 artifacts and the sweep's storage is S3 (moto), as cluster.yaml sets them up. A worker node
disappears mid-sweep without warning, twice, as spot instances do, and replacements join; in a second test the
head itself is lost and --resume on a new head continues the sweep.

The trials are the simulated task (real searcher, scheduler, checkpoints and MLflow; one second per epoch), so
where a node is lost is controlled to the epoch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.ray_processes import kill_new_ray_processes, ray_processes
from tests import servers
from tests.conftest import LaunchedSweep, launch

pytestmark = pytest.mark.slow

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # else Ray rewrites 127.0.0.1 to the host's address
EPOCHS = 10


DATASETS = ["{name: synthetic, id: a}", "{name: synthetic, id: b, options: {seed: 1}}"]


def spec(path: Path, scheduler: str = "{type: fifo}", datasets: int = 2, trials_per_cell: int = 2) -> Path:
    """Two methods on `datasets` synthetic datasets, `trials_per_cell` learning rates each."""
    path.write_text(
        "name: nodes\ntask: simulated\n"
        f"datasets: [{', '.join(DATASETS[:datasets])}]\n"
        "backbones: [{name: test_resnet, weights: random}]\n"
        "methods: [linear, bitfit]\n"
        "image_size: 16\n"
        f"train: {{epochs: {EPOCHS}, epoch_seconds: 1.0}}\n"
        f"search: {{sampler: grid, trials_per_cell: {trials_per_cell}, extend: false, max_epoch_doublings: 0}}\n"
        f"scheduler: {scheduler}\n"
        "resources: {cpus_per_trial: 0.5}\n"
    )
    return path


class LoopbackCluster:
    """A head with no CPUs (only the driver resource) and worker nodes of one CPU each, all on 127.0.0.1."""

    def __init__(self, workers: int) -> None:
        from ray.cluster_utils import Cluster

        os.environ.update(LOOPBACK)
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "resources": {"medpeft_driver": 64},
            "include_dashboard": False, "object_store_memory": 96 * 2**20})
        self.workers = [self.add() for _ in range(workers)]

    def add(self):
        return self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=96 * 2**20)

    @property
    def address(self) -> str:
        return self.cluster.address

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture
def cluster():
    before = ray_processes()
    made = []

    def make(workers: int = 2) -> LoopbackCluster:
        made.append(LoopbackCluster(workers))
        return made[-1]

    yield make
    for c in made:
        c.shutdown()
    time.sleep(1)
    kill_new_ray_processes(before)
    assert not (ray_processes() - before), "Ray processes left behind"


def trial_runs(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nodes")
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000)


def running_on(uri: str, node_id: str, min_epoch: int) -> dict[str, int]:
    """Trials now running on that node that have logged at least `min_epoch` epochs: key -> last epoch."""
    try:
        _, runs = trial_runs(uri)
    except Exception:  # the store is not there yet
        return {}
    out = {}
    for run in runs:
        if run.data.tags.get("node") == node_id and run.data.tags.get("status") == "running":
            epoch = int(run.data.metrics.get("epoch", 0))
            if epoch >= min_epoch:
                out[run.data.tags["trial_key"]] = epoch
    return out


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """The tracking and storage stack of cluster.yaml, real: an `mlflow server` with a PostgreSQL backend store and
    S3 artifacts, and the sweep's storage (Tune state, checkpoints, prepared data) on the same S3 (moto), all on
    loopback. Where PostgreSQL is not installed: MLflow's sqlite file and a local folder, and the PostgreSQL checks
    are skipped (said in the test's output)."""
    if not servers.postgres_available():
        print("PostgreSQL is not installed: the sweep tracks to sqlite and stores locally")
        yield {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "storage": str(tmp_path / "store"),
               "args": [], "env": {**os.environ, **LOOPBACK}, "database": None, "s3": None}
        return
    import boto3

    with servers.moto_s3() as endpoint, servers.postgres() as database:
        keys = {"AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY02", "AWS_SECRET_ACCESS_KEY": "fake-secret-for-the-stack",
                "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket="medpeft")
        # The cluster's nodes (started after this) inherit it, as cluster.yaml's nodes get it from their setup.
        for name, value in {**keys, "AWS_ENDPOINT_URL_S3": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(name, value)
        with servers.mlflow_server(database, "s3://medpeft/mlartifacts",
                                   {**keys, "MLFLOW_S3_ENDPOINT_URL": endpoint}) as url:
            yield {"uri": url, "storage": "s3://medpeft/sweeps", "args": ["--mlflow-uri", url],
                   "env": {**os.environ, **LOOPBACK, **keys, "AWS_ENDPOINT_URL_S3": endpoint,
                           "MLFLOW_S3_ENDPOINT_URL": endpoint}, "database": database, "s3": s3}


def drain(address: str, node_id: str) -> None:
    """A preemption notice: the node drained through the GCS, as the autoscaler does for a spot interruption."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    accepted, why = GcsClient(address=address).drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "spot interruption",
        int(time.time() * 1000) + 120_000)
    assert accepted, why


@pytest.mark.long
def test_lost_nodes_cost_at_most_an_epoch_and_no_failure(cluster, stack, tmp_path):
    """A 3-node sweep (driver on the head, trials on two workers) against the tracking stack. First a worker gets a
    preemption notice: its trials checkpoint their epoch and move, losing nothing. Then a worker vanishes without
    notice, twice: its trials restart from their last checkpoint on other nodes (a trial may lose its node twice on
    a failure budget of one). Replacements join and get work."""
    c = cluster(workers=2)
    uri = stack["uri"]
    sweep = LaunchedSweep(["--config", str(spec(tmp_path / "nodes.yaml")), "--storage", stack["storage"],
                           "--address", c.address, *stack["args"]], env=stack["env"])
    events = []  # (how, {trial key: its last logged epoch when its node went})
    replacements = []
    for how in ("drained", "killed", "killed"):
        busy: dict = {}  # the worker with the most trials past their second epoch, and those trials

        def some_worker_busy(seen=busy) -> bool:
            counts = {n: running_on(uri, n.node_id, 2) for n in c.workers}
            node = max(counts, key=lambda n: len(counts[n]))
            seen.update(node=node, trials=counts[node])
            return bool(counts[node])

        assert sweep.wait_for(some_worker_busy, timeout=240), f"no trial got going:\n{sweep.output[-3000:]}"
        victim, found = busy["node"], busy["trials"]
        if how == "drained":
            drain(c.address, victim.node_id)

            def moved(keys=frozenset(found), node=victim) -> bool:
                _, runs = trial_runs(uri)
                return all(r.data.tags.get("node") != node.node_id for r in runs if r.data.tags["trial_key"] in keys)

            assert sweep.wait_for(moved, timeout=120), sweep.output[-3000:]
            c.cluster.remove_node(victim)  # the interruption itself, once its trials have left
        else:
            c.cluster.remove_node(victim, allow_graceful=False)  # a spot instance gone, no notice
        c.workers.remove(victim)
        events.append((how, found))
        replacements.append(c.add())
        c.workers.append(replacements[-1])
    assert sweep.wait(420) == 0, sweep.output[-3000:]
    out = sweep.output
    assert "4/4 cells complete" in out and "[node lost]" in out, out[-4000:]
    client, runs = trial_runs(uri)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == 8, "one MLflow run per trial"
    assert {r.data.tags["status"] for r in runs} == {"finished"}
    by_key = {r.data.tags["trial_key"]: r for r in runs}
    for how, found in events:
        for key, epoch in found.items():
            run = by_key[key]
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
            assert steps == list(range(1, EPOCHS + 1)), f"{key}: every epoch logged once"
            resumed = int(run.data.tags["resumed_from_epoch"])
            # Drained: it left right after checkpointing, at or after the epoch it had reached at the notice.
            # Killed: it restarts from its last checkpoint, at most the epoch in progress lost.
            low = epoch if how == "drained" else epoch - 1
            assert resumed >= low, f"{key} ({how}): at epoch {epoch} then, resumed from {resumed}"
    nodes = {r.data.tags["node"] for r in runs}
    assert nodes & {n.node_id for n in replacements}, "no replacement node got work"
    if stack["database"]:
        import psycopg2

        experiment = client.get_experiment_by_name("nodes")
        assert experiment.artifact_location.startswith("s3://medpeft/")
        objects = [o["Key"] for page in stack["s3"].get_paginator("list_objects_v2").paginate(Bucket="medpeft")
                   for o in page.get("Contents", [])]
        assert any(k.startswith("sweeps/nodes/") for k in objects)  # Tune's experiment state
        assert any(k.startswith("sweeps/nodes/checkpoints/") for k in objects)  # the trials' checkpoints
        with psycopg2.connect(stack["database"].replace("+psycopg2", "")) as connection, \
                connection.cursor() as cursor:
            # A trial whose node was lost before its first checkpoint starts over, and the run of that attempt is
            # deleted (trainables/mlflow_run.py: no stale epochs): MLflow keeps it as a deleted row.
            cursor.execute("SELECT count(*) FROM runs WHERE lifecycle_stage = 'active'")
            assert cursor.fetchone()[0] == 8 + 4 + 1  # in PostgreSQL: the trials, the cells, the sweep's run
            cursor.execute("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE r.lifecycle_stage = 'deleted' AND t.key = 'role' AND t.value <> 'trial'")
            assert cursor.fetchone()[0] == 0  # only a trial's attempt is ever deleted


@pytest.mark.long
def test_lost_nodes_under_synchronous_halving(cluster, tmp_path):
    """Successive halving waits at each rung for every trial of a cell still in the race. A worker vanishes while
    trials run towards the first rung (some of their cell already wait there, paused), then again while a
    promoted trial runs towards the second: the rungs wait for the restarted trials, and each cell ends exactly
    as halving without a lost node would (the best third of 3 at epoch 2 goes on; the rest stopped early there,
    recorded as such), every epoch logged once."""
    c = cluster(workers=2)
    storage = tmp_path / "store"
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    halving = "{type: halving, grace_period: 2, reduction_factor: 3}"  # rungs at epochs 2 and 6 of 10
    sweep = LaunchedSweep(["--config", str(spec(tmp_path / "nodes.yaml", halving, datasets=1, trials_per_cell=3)),
                           "--storage", str(storage), "--address", c.address], env={**os.environ, **LOOPBACK})
    killed = {}  # trial key -> its last logged epoch when its node went
    for min_epoch in (1, 3):
        busy: dict = {}

        def some_worker_busy(seen=busy, min_epoch=min_epoch) -> bool:
            counts = {n: running_on(uri, n.node_id, min_epoch) for n in c.workers}
            node = max(counts, key=lambda n: len(counts[n]))
            seen.update(node=node, trials=counts[node])
            return bool(counts[node])

        assert sweep.wait_for(some_worker_busy, timeout=240), f"no trial got going:\n{sweep.output[-3000:]}"
        c.cluster.remove_node(busy["node"], allow_graceful=False)
        c.workers.remove(busy["node"])
        killed.update(busy["trials"])
        c.workers.append(c.add())
    assert sweep.wait(300) == 0, sweep.output[-3000:]
    out = sweep.output
    assert "2/2 cells complete" in out and "[node lost]" in out, out[-4000:]
    verdicts = [line for line in out.splitlines() if line.startswith("[") and "/trial=" in line]
    assert not [v for v in verdicts if "finished" in v and f"finished {EPOCHS}/{EPOCHS}" not in v], verdicts
    client, runs = trial_runs(uri)
    assert len({r.data.tags["trial_key"] for r in runs}) == len(runs) == 6, "one MLflow run per trial"
    by_cell: dict[str, list] = {}
    for run in runs:
        key = run.data.tags["trial_key"]
        by_cell.setdefault(key.rsplit("/trial=", 1)[0], []).append(run)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        expected = EPOCHS if run.data.tags["status"] == "finished" else 2
        assert steps == list(range(1, expected + 1)), f"{key} ({run.data.tags['status']}): logged {steps}"
        if key in killed:
            assert int(run.data.tags.get("resumed_from_epoch", 0)) >= killed[key] - 1, key
    for cell, cell_runs in by_cell.items():
        assert sorted(r.data.tags["status"] for r in cell_runs) == ["finished", "stopped_early", "stopped_early"]
        at_rung = {r.data.tags["trial_key"]: next(m.value for m in client.get_metric_history(r.info.run_id,
                                                                                               "val/best_acc")
                                                  if m.step == 2) for r in cell_runs}
        winner = next(r.data.tags["trial_key"] for r in cell_runs if r.data.tags["status"] == "finished")
        assert at_rung[winner] == max(at_rung.values()), f"{cell}: {winner} went on, the best at epoch 2 did not"
    assert killed, "no trial was running on a lost node"


@pytest.mark.long
def test_head_lost_and_the_sweep_resumed_on_a_new_head(cluster, tmp_path):
    first = cluster(workers=2)
    storage = tmp_path / "store"
    args = ["--config", str(spec(tmp_path / "nodes.yaml")), "--storage", str(storage)]
    env = {**os.environ, **LOOPBACK}
    sweep = LaunchedSweep([*args, "--address", first.address], env=env)
    assert sweep.wait_for(lambda: sweep.count(lambda line: line.startswith("[") and "finished" in line) >= 2,
                          timeout=300), sweep.output[-3000:]
    sweep.kill()  # the driver and the whole head go: the cluster is gone with them
    first.shutdown()
    _, before = trial_runs(f"sqlite:///{storage / 'mlflow.db'}")
    finished = {r.data.tags["trial_key"]: r.info.end_time for r in before if r.data.tags["status"] == "finished"}
    second = cluster(workers=2)
    result = launch("--storage", str(storage), "--name", "nodes", "--resume", "--address", second.address, env=env)
    assert "4/4 cells complete" in result.stdout
    _, after = trial_runs(f"sqlite:///{storage / 'mlflow.db'}")
    assert len({r.data.tags["trial_key"] for r in after}) == len(after) == 8
    assert {r.data.tags["status"] for r in after} == {"finished"}
    now = {r.data.tags["trial_key"]: r.info.end_time for r in after}
    assert all(now[k] == t for k, t in finished.items()), "a trial finished before the head was lost ran again"
