"""MLflow under load: 16 trial processes writing at once lose no run and no metric, through a tracking server and
through the local default store (a sqlite file the sweep creates before any trial starts)."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from tests.servers import mlflow_server

pytestmark = pytest.mark.slow
WRITERS, STEPS = 16, 15


def writer(args: tuple[str, str, int]) -> str:
    """What a trial does: a run with params, then a batch of metrics per epoch, then the end."""
    uri, experiment, index = args
    client = MlflowClient(uri)
    run = client.create_run(experiment, tags={"role": "trial", "writer": str(index)}).info.run_id
    client.log_batch(run, params=[Param(f"p{i}", str(i)) for i in range(20)])
    for step in range(STEPS):
        now = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(k, float(step), now, step) for k in ("train/loss", "val/acc", "epoch")])
    client.set_terminated(run)
    return run


def hammer(uri: str) -> None:
    client = MlflowClient(uri)
    experiment = client.create_experiment("load")
    with multiprocessing.get_context("spawn").Pool(WRITERS) as pool:
        run_ids = pool.map(writer, [(uri, experiment, i) for i in range(WRITERS)])
    runs = client.search_runs([experiment])
    assert len(runs) == WRITERS == len(set(run_ids))
    for run_id in run_ids:
        for key in ("train/loss", "val/acc", "epoch"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(STEPS)), key
        assert len(client.get_run(run_id).data.params) == 20


def test_sixteen_writers_through_a_tracking_server(tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", (tmp_path / "artifacts").as_uri()) as url:
        hammer(url)


def test_sixteen_writers_on_the_local_default_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the driver creates the store first (schema migration races otherwise)
    hammer(uri)
