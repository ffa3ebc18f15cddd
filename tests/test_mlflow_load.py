"""MLflow under load: 16 trial processes writing at once lose no run and no metric, through a tracking server and
through the local default store (a sqlite file the sweep creates before any trial starts).

Both sides are ours: the driver's `sweep.store.mlflow_experiment.prepare` creates the store, the experiment, the
parent run and the cell runs; each writer is a trial's rank-0 worker logging through `trainables.mlflow_run`
(its run found or created by trial key under its cell's run, params once, a batch of metrics per epoch, the end).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from sweep.plan.grid import base_config, expand, with_searched
from sweep.plan.spec import SweepSpec, load_method_spaces
from sweep.store import mlflow_experiment
from tests.servers import mlflow_server
from trainables.contract import CELL_KEY_TAG, EPOCH, ROLE_TAG, STATUS_TAG, TRIAL_KEY_TAG, Status
from trainables.tasks import get_task

pytestmark = pytest.mark.slow
CELLS, TRIALS_PER_CELL, STEPS = 4, 4, 15
WRITERS = CELLS * TRIALS_PER_CELL  # 16
PARAMS = 20
METRICS = ("train/loss", "val/acc", EPOCH)


def sweep_spec() -> SweepSpec:
    """A sweep of CELLS cells (one per seed) of TRIALS_PER_CELL trials each."""
    return SweepSpec.model_validate({
        "name": "load", "task": "simulated", "datasets": [{"name": "synthetic"}],
        "backbones": [{"name": "test_resnet", "weights": "random"}], "methods": ["linear"],
        "seeds": list(range(CELLS)), "train": {"epochs": STEPS},
        "search": {"sampler": "random", "trials_per_cell": TRIALS_PER_CELL},
    })


def writer(config: dict[str, Any]) -> str:
    """What a trial's rank-0 worker does with its config: open its run, log every epoch, end it."""
    from trainables.config import TrialConfig
    from trainables.mlflow_run import config_hash, open_trial_run
    from trainables.trial import run_tags

    cfg = TrialConfig.model_validate(config)
    params = {f"p{i}": i for i in range(PARAMS)}
    run = open_trial_run(cfg.tracking, 0, params, run_tags(cfg, {}), config_hash(config), resuming=False)
    for step in range(STEPS):
        run.log_metrics({key: float(step) for key in METRICS}, step=step)
    run.finish(Status.FINISHED)
    return run.run_id


def hammer(uri: str, artifacts: str) -> None:
    spec = sweep_spec()
    cells = expand(spec, get_task(spec.task).short, load_method_spaces(spec))
    assert len(cells) == CELLS and all(c.budget == TRIALS_PER_CELL for c in cells)
    tracking = mlflow_experiment.prepare(uri, spec.name, artifacts, cells, spec.model_dump_json())
    configs = [with_searched(base_config(spec, cell, tracking.for_cell(spec.name, cell)), {"lr": 1e-3 * (i + 1)},
                             cell.trial_key(i))
               for cell in cells for i in range(cell.budget)]
    with multiprocessing.get_context("spawn").Pool(WRITERS) as pool:
        run_ids = pool.map(writer, configs)

    client = mlflow_experiment.client(uri)
    everything = client.search_runs([tracking.experiment_id])
    assert len(everything) == 1 + CELLS + WRITERS  # the sweep's run, its cells' runs, every trial's run
    trials = {r.info.run_id: r for r in everything if r.data.tags.get(ROLE_TAG) == "trial"}
    assert len(trials) == WRITERS == len(set(run_ids)) and set(trials) == set(run_ids)
    assert sorted(r.data.tags[TRIAL_KEY_TAG] for r in trials.values()) == sorted(
        c["tracking"]["trial_key"] for c in configs)
    for run in trials.values():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == tracking.cell_runs[tags[CELL_KEY_TAG]]
        assert tags[STATUS_TAG] == Status.FINISHED and run.info.status == "FINISHED"
        assert len(run.data.params) == PARAMS
        for key in METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(STEPS)), key


@pytest.mark.long
def test_sixteen_writers_through_a_tracking_server(tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", (tmp_path / "artifacts").as_uri()) as url:
        hammer(url, (tmp_path / "artifacts").as_uri())


@pytest.mark.long
def test_sixteen_writers_on_the_local_default_store(tmp_path):
    # prepare() creates the store first (sweep.store.mlflow_experiment.create_store): trials opening a store that
    # is still being migrated would race on its schema.
    hammer(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
