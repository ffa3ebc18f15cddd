"""What a sweep ended with: the launcher's final table of cells, and what the sweep writes back to MLflow so that
its compare view answers "which method won here" without our report: each trial's `is_best_in_cell`, each cell's
chosen trial with its scores and verdicts. Both read each cell's outcome from sweep.results.cell_outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from sweep.report.console_table import cell_frame
from sweep.results.cell_outcome import cell_outcomes, learned_word
from sweep.results.seeds import added_cells
from sweep.results.table import cell_status, trials_table
from sweep.store import mlflow_experiment
from trainables.contract import (
    BEST_IN_CELL_TAG,
    CELL_TEST_METRIC,
    CELL_VAL_METRIC,
    CHOSEN_LR_METRIC,
    CHOSEN_TAG,
    CHOSEN_TRIAL_TAG,
    COMPLETE_TAG,
    ENDED,
    KNOBS_AT_EDGE_TAG,
    LEARNED_TAG,
    LR_AT_EDGE_TAG,
    NOT_CONVERGED_TAG,
    TRIVIAL_TEST_METRIC,
    TRIVIAL_VAL_METRIC,
)


@dataclass
class Outcome:
    complete: bool
    cells: pd.DataFrame  # sweep.report.console_table.cell_frame: one row per cell, planned or added
    seconds: float


def sweep_outcome(plan, name: str, mlflow_uri: str, parent_run_id: str, started: float) -> Outcome:
    """Read a sweep's runs back from MLflow after its Tune run ended, write each cell's outcome back to its cell
    run (closing the parent run when every cell is complete) and return the launcher's table. `started`: when the
    sweep started (time.monotonic())."""
    # The spec's tolerance: the cell runs' not_converged then says what the search rounds judged.
    trials, planned = trials_table(mlflow_uri, name, plan.spec.search.flat_tolerance)
    outcomes = cell_outcomes(trials)
    cells = cell_frame(trials, [*plan.cells, *added_cells(plan.cells, planned)], plan.max_epochs, outcomes)
    if len(cells) and "search" in planned:  # each cell's rounds, as its cell run records them (callbacks.py)
        cells["search"] = cells["cell_key"].map(dict(zip(planned["cell_key"], planned["search"], strict=True)))
    complete = bool(len(cells)) and bool(cells["complete"].all())
    record_outcome(mlflow_uri, trials, cell_status(trials, planned), parent_run_id if complete else None, outcomes)
    return Outcome(complete, cells, time.monotonic() - started)


def record_outcome(uri: str, trials: pd.DataFrame, status: pd.DataFrame, finished_parent: str | None = None,
                   outcomes: pd.DataFrame | None = None) -> None:
    """What MLflow's compare view needs to answer "which method won here": every ended trial run gets an
    `is_best_in_cell` tag; every cell run its chosen trial, chosen hyperparameters and scores (`chosen_lr`,
    `val`, `test`). Complete cells (and, when given, the sweep's parent run) are closed. `outcomes`:
    cell_outcomes(trials), where the caller has it already."""
    from mlflow.entities import Metric, RunTag

    mlflow = mlflow_experiment.client(uri)
    for run_id, best, state in zip(trials["run_id"], trials["is_best_in_cell"], trials["status"], strict=True):
        if state in ENDED:
            mlflow.set_tag(run_id, BEST_IN_CELL_TAG, str(bool(best)).lower())
    chosen = (cell_outcomes(trials) if outcomes is None else outcomes).set_index("cell_key")
    now = int(time.time() * 1000)
    for cell in status.itertuples():
        tags, metrics = [RunTag(COMPLETE_TAG, str(bool(cell.complete)).lower())], []
        if cell.cell_key in chosen.index:
            best = chosen.loc[cell.cell_key]
            tags += [RunTag(CHOSEN_TRIAL_TAG, best["trial_key"]), RunTag(CHOSEN_TAG, best["chosen"]),
                     RunTag(LEARNED_TAG, learned_word(best["learned"])),
                     RunTag(NOT_CONVERGED_TAG, str(bool(best.get("not_converged", False))).lower()),
                     RunTag(LR_AT_EDGE_TAG, str(best.get("lr_at_edge", "")) or "no"),
                     RunTag(KNOBS_AT_EDGE_TAG, str(best.get("knobs_at_edge", "")) or "no")]
            values = {CELL_VAL_METRIC: best["val_best"], CELL_TEST_METRIC: best["test_main"],
                      CHOSEN_LR_METRIC: best["chosen_lr"], TRIVIAL_VAL_METRIC: best["trivial_val"],
                      TRIVIAL_TEST_METRIC: best["trivial_test"]}
            metrics = [Metric(k, float(v), now, 0) for k, v in values.items()
                       if isinstance(v, int | float) and v == v]
        mlflow.log_batch(cell.cell_run_id, metrics=metrics, tags=tags)
        if cell.complete:
            mlflow.set_terminated(cell.cell_run_id, "FINISHED")
    if finished_parent:
        mlflow.set_terminated(finished_parent, "FINISHED")
