"""A sweep's MLflow runs as two tables: one row per trial, one per planned cell (`trials_table`, the one reader of
MLflow here), and each cell's chosen trial by the contract's rule. Everything after `trials_table` is a pure function
of its DataFrames, so every number can be recomputed from `results.parquet`."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from sweep.results import trust
from sweep.store import mlflow_experiment
from trainables.contract import (
    BN_MODE_PARAM,
    BUDGET_PARAM,
    CELL_FIELD_TAGS,
    CELL_KEY_TAG,
    COUNTS_TEST_PARAM,
    COUNTS_VAL_PARAM,
    CPUS_PARAM,
    ENDED,
    EPOCH,
    EPOCHS_PARAM,
    FAILURE_REASON,
    GPUS_PARAM,
    METHOD_PREFIX,
    PEAK_MEM,
    ROLE_TAG,
    SCORE,
    SCORE_TOLERANCE,
    SEARCH_EDGE_TAG,
    SEARCH_KNOB_EDGES_TAG,
    SEARCH_NOTE_TAG,
    SEARCH_TAG,
    SEARCHED_PREFIX,
    SELECTION_TEST_HIGHER_PARAM,
    SELECTION_TEST_PARAM,
    SELECTION_VAL_PARAM,
    STATUS_TAG,
    TEST_ACC,
    TEST_METRICS,
    TEST_PREFIX,
    TOTAL_PARAMS_PARAM,
    TRAIN_PREFIX,
    TRAINABLE_PARAMS_PARAM,
    TRAINABLE_SHARE_PARAM,
    TRIAL_KEY_TAG,
    VAL_BEST_ACC,
    VAL_BEST_LOSS,
    WORKERS_PARAM,
    Status,
    score_tolerance,
    selection_order,
    still_improving,
)

CELL_FIELDS = list(CELL_FIELD_TAGS)  # the cell-field columns of both tables: the runs' tags of the same names


def trials_table(uri: str, sweep: str, tolerance: float = SCORE_TOLERANCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per planned cell) of a sweep, from MLflow. `tolerance`: the spec's
    search.flat_tolerance (raised, as the rounds raise it, to the standard error of the trial's validation score:
    trainables.contract.score_tolerance), so a chosen trial is "not converged" here exactly when its search rounds
    judged it so."""
    mlflow = mlflow_experiment.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        raise LookupError(f"MLflow at {uri} has no sweep named {sweep!r}")
    trial_runs = mlflow_experiment.search_all(mlflow, experiment.experiment_id, f"tags.{ROLE_TAG} = 'trial'")
    cell_runs = mlflow_experiment.search_all(mlflow, experiment.experiment_id, f"tags.{ROLE_TAG} = 'cell'")
    rows = pd.DataFrame([_trial_row(sweep, run) for run in trial_runs])
    trials = rows.reindex(columns=[*_TRIAL_COLUMNS, *[c for c in rows.columns if c not in _TRIAL_COLUMNS]])
    cells = pd.DataFrame([{
        "cell_key": run.data.tags[CELL_KEY_TAG],
        "cell_run_id": run.info.run_id,
        "budget": int(run.data.params.get(BUDGET_PARAM, 0)),
        # The cell's search rounds (sweep/tune/rounds.py describe), under the names of their tags.
        **{tag: run.data.tags.get(tag, "") for tag in (SEARCH_TAG, SEARCH_EDGE_TAG, SEARCH_NOTE_TAG,
                                                       SEARCH_KNOB_EDGES_TAG)},
        **{f: run.data.tags.get(f, "") for f in CELL_FIELDS},
    } for run in cell_runs])
    if not cells.empty:
        cells["fraction"] = cells["fraction"].astype(float)
        cells["seed"] = cells["seed"].astype(int)
        cells = cells.sort_values("cell_key").reset_index(drop=True)  # MLflow returns newest first
    trials = mark_best_in_cell(trials)
    trials = _with_curve_checks(mlflow, trials, tolerance)
    if len(cells) and "lr_at_edge" in trials:
        # A chosen learning rate at the edge of what its cell tried is a range edge (‡: widen it) unless the cell's
        # search ended there for a reason: larger learning rates diverged, or every one tried scored the same.
        settled = set(cells.loc[cells[SEARCH_EDGE_TAG].isin(SETTLED_EDGES), "cell_key"])
        trials.loc[trials["cell_key"].isin(settled), "lr_at_edge"] = ""
    return trials.sort_values(["cell_key", "trial_key"]).reset_index(drop=True), cells


# The kinds of end of a cell's learning-rate search (sweep/tune/rounds.py EDGE_KINDS) that are not a range edge to
# widen, though the chosen learning rate may be the highest or lowest tried.
SETTLED_EDGES = ("interior", "stability", "flat")


def validation_images(counts: object) -> int | None:
    """The validation images of a trial from its counts_val column (the class counts, as JSON), None if unknown."""
    try:
        total = sum(int(c) for c in json.loads(counts))
    except (TypeError, ValueError):
        return None
    return total or None


def _with_curve_checks(mlflow, trials: pd.DataFrame, tolerance: float = SCORE_TOLERANCE) -> pd.DataFrame:
    """For each cell's chosen trial: was its validation score still improving at its last epochs (the contract's
    still_improving on its per-epoch SCORE, the selection metric oriented higher-is-better: the rule the search
    rounds double a trial's epochs by), and are its learning rate and its other searched knobs at the edge of
    what the cell tried. Only chosen trials' histories are read (one per cell).

    Not the training loss: a loss still falling while the validation score has stopped rising says that more
    epochs would fit the training set better, not that they would change the choice, and the rounds do not act
    on it; a † that disagreed with them would say "train longer" where training longer was judged pointless."""
    trials = trials.copy()
    trials["not_converged"] = False
    trials["lr_at_edge"] = ""
    trials["knobs_at_edge"] = ""
    chosen = trials[trials["is_best_in_cell"]] if len(trials) else trials
    for index, run_id in zip(chosen.index, chosen["run_id"], strict=True):
        # epoch -> SCORE, as the searcher records it (an epoch logged again after a resume counts once).
        history = {m.step: m.value for m in sorted(mlflow.get_metric_history(run_id, SCORE),
                                                   key=lambda m: (m.step, m.timestamp))}
        scores = [v for v in history.values() if math.isfinite(v)]
        trials.loc[index, "not_converged"] = still_improving(history, score_tolerance(
            max(scores, default=None), validation_images(trials.loc[index, "counts_val"]), tolerance))
    if len(chosen):
        for column, edges in (("lr_at_edge", trust.at_edge(trials, chosen)),
                              ("knobs_at_edge", trust.knobs_at_edge(trials, chosen))):
            trials.loc[chosen.index, column] = chosen["cell_key"].map(edges).fillna("").to_numpy()
    return trials


_TRIAL_COLUMNS = [
    "sweep", "trial_key", "cell_key", "run_id", *CELL_FIELDS, "status", "stopped_early", "failure_reason",
    "score", "val_metric", "val_best", "val_best_loss", "test_metric", "test_higher_is_better", "test_main",
    "test_f1", "test_acc", "test_balanced_acc", "test_auroc", "test_mcc", "test_loss", "bn_mode",
    "counts_val", "counts_test",
    "trainable_params", "total_params", "trainable_share", "epochs_run", "max_epochs", "wall_seconds",
    "peak_mem_mb", "cpus", "gpus", "workers",
]


def _trial_row(sweep: str, run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    val_key = params.get(SELECTION_VAL_PARAM, VAL_BEST_ACC)
    test_key = params.get(SELECTION_TEST_PARAM, TEST_ACC)
    end = run.info.end_time or None
    row: dict[str, Any] = {
        "sweep": sweep,
        "trial_key": tags.get(TRIAL_KEY_TAG),
        "cell_key": tags.get(CELL_KEY_TAG),
        "run_id": run.info.run_id,
        "task": tags.get("task", ""),
        "dataset": tags.get("dataset", ""),
        "backbone": tags.get("backbone", ""),
        "method": tags.get("method", ""),
        "fraction": float(tags.get("fraction", "nan")),
        "seed": int(tags.get("seed", -1)),
        "status": tags.get(STATUS_TAG, Status.RUNNING),
        "stopped_early": tags.get(STATUS_TAG) == Status.STOPPED_EARLY,
        "failure_reason": tags.get(FAILURE_REASON, ""),
        "score": metrics.get(SCORE, math.nan),
        "val_metric": val_key,
        "val_best": metrics.get(val_key, math.nan),
        "val_best_loss": metrics.get(VAL_BEST_LOSS, math.nan),
        "test_metric": test_key,
        "test_higher_is_better": params.get(SELECTION_TEST_HIGHER_PARAM, "True") == "True",
        "test_main": metrics.get(test_key, math.nan),
        **{_test_column(key): metrics.get(key, math.nan) for key in TEST_METRICS},
        "bn_mode": params.get(BN_MODE_PARAM, ""),
        # Images per class of the validation and test splits: the trivial classifier's scores come from them.
        "counts_val": params.get(COUNTS_VAL_PARAM, ""),
        "counts_test": params.get(COUNTS_TEST_PARAM, ""),
        "trainable_params": int(params.get(TRAINABLE_PARAMS_PARAM, 0)),
        "total_params": int(params.get(TOTAL_PARAMS_PARAM, 0)),
        "trainable_share": float(params.get(TRAINABLE_SHARE_PARAM, "nan")),
        "epochs_run": int(metrics.get(EPOCH, 0)),
        "max_epochs": int(params.get(EPOCHS_PARAM, 0)),
        "wall_seconds": (end - run.info.start_time) / 1000 if end else math.nan,
        "peak_mem_mb": metrics.get(PEAK_MEM, math.nan),
        "cpus": float(params.get(CPUS_PARAM, "nan")),
        "gpus": float(params.get(GPUS_PARAM, "nan")),
        "workers": int(params.get(WORKERS_PARAM, 1)),
    }
    for key, value in metrics.items():  # every other test metric too (test/fid, test/kid for text-to-image)
        if key.startswith(TEST_PREFIX):
            row.setdefault(_test_column(key), value)
    for key, value in params.items():  # every hyperparameter, searched or fixed, and every method knob
        if key.startswith((SEARCHED_PREFIX, TRAIN_PREFIX, METHOD_PREFIX)):
            row[key] = _number(value)
    return row


def _test_column(metric: str) -> str:
    """'test/balanced_acc' -> 'test_balanced_acc': a test metric's column of the trials table."""
    return "test_" + metric.removeprefix(TEST_PREFIX).replace("/", "_")


def _number(value: str) -> Any:
    try:
        return float(value) if any(c in value for c in ".eE") or value.lstrip("-").isdigit() else value
    except ValueError:
        return value


def chosen_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Each cell's chosen trial among those that ran to the end, by the contract's rule
    (trainables.contract.selection_order: the best validation score, whatever the task; ties to the lower
    validation loss, then the lower trial key). Test metrics play no part."""
    finished = trials[(trials["status"] == Status.FINISHED) & trials["score"].notna()]
    order = pd.Series([selection_order(*row) for row in zip(finished["score"], finished["val_best_loss"],
                                                            finished["trial_key"], strict=True)],
                      index=finished.index, dtype=object)
    ordered = finished.loc[sorted(finished.index, key=lambda i: (finished.at[i, "cell_key"], order[i]))]
    return ordered.groupby("cell_key", sort=True).head(1).reset_index(drop=True)


def mark_best_in_cell(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` with `is_best_in_cell`: each cell's chosen trial, ranked once here (trials_table marks what it
    reads; what changes a trial's status after that marks again). Everything downstream reads the mark."""
    trials = trials.copy()
    trials["is_best_in_cell"] = trials["run_id"].isin(chosen_trials(trials)["run_id"]) if len(trials) else []
    return trials


def cell_status(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per planned cell: trials ended vs budget, and whether it has a chosen trial (`trials` marked by
    mark_best_in_cell)."""
    ended = trials[trials["status"].isin(ENDED)].groupby("cell_key").size()
    chosen = set(trials.loc[trials["is_best_in_cell"].astype(bool), "cell_key"]) if len(trials) else set()
    status = cells.copy()
    status["ended"] = status["cell_key"].map(ended).fillna(0).astype(int)
    status["complete"] = status["ended"] >= status["budget"]
    status["has_result"] = status["cell_key"].isin(chosen)
    return status
