"""From MLflow runs to the study's numbers: the per-trial table, each cell's chosen trial (on validation only),
and the tables of the report. `trials_table` reads MLflow (the runs, and the validation-score history of each
cell's chosen trial); everything after it is a pure function of that table's DataFrame, so every number can be
recomputed from `results.parquet`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sweep.report import trust
from sweep.store import mlflow_experiment
from trainables.contract import (
    CELL_KEY_TAG,
    ENDED,
    EPOCH,
    FAILURE_REASON,
    ROLE_TAG,
    SCORE,
    SCORE_TOLERANCE,
    STATUS_TAG,
    TRIAL_KEY_TAG,
    VAL_BEST_LOSS,
    Status,
    selection_order,
    still_improving,
)

CELL_FIELDS = ["task", "dataset", "backbone", "method", "fraction", "seed"]


def trials_table(uri: str, sweep: str, tolerance: float = SCORE_TOLERANCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per planned cell) of a sweep, from MLflow. `tolerance`: the spec's
    search.flat_tolerance, so a chosen trial is "not converged" here exactly when its search rounds judged it so."""
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
        "budget": int(run.data.params.get("budget", 0)),
        "search": run.data.tags.get("search", ""),  # the cell's search rounds (sweep/tune/rounds.py describe)
        "search_edge": run.data.tags.get("search_edge", ""),
        "search_note": run.data.tags.get("search_note", ""),
        "search_knob_edges": run.data.tags.get("search_knob_edges", ""),
        **{f: run.data.tags.get(f, "") for f in CELL_FIELDS},
    } for run in cell_runs])
    if not cells.empty:
        cells["fraction"] = cells["fraction"].astype(float)
        cells["seed"] = cells["seed"].astype(int)
        cells = cells.sort_values("cell_key").reset_index(drop=True)  # MLflow returns newest first
    trials = mark_best_in_cell(trials)
    trials = _with_curve_checks(mlflow, trials, tolerance)
    return trials.sort_values(["cell_key", "trial_key"]).reset_index(drop=True), cells


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
        trials.loc[index, "not_converged"] = still_improving(history, tolerance)
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
    val_key = params.get("selection.val", "val/best_acc")
    test_key = params.get("selection.test", "test/acc")
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
        "test_higher_is_better": params.get("selection.test_higher_is_better", "True") == "True",
        "test_main": metrics.get(test_key, math.nan),
        "test_f1": metrics.get("test/f1", math.nan),
        "test_acc": metrics.get("test/acc", math.nan),
        "test_balanced_acc": metrics.get("test/balanced_acc", math.nan),
        "test_auroc": metrics.get("test/auroc", math.nan),
        "test_mcc": metrics.get("test/mcc", math.nan),
        "test_loss": metrics.get("test/loss", math.nan),
        "bn_mode": params.get("method.bn_mode", ""),
        # Images per class of the validation and test splits: the trivial classifier's scores come from them.
        "counts_val": params.get("data.counts_val", ""),
        "counts_test": params.get("data.counts_test", ""),
        "trainable_params": int(params.get("trainable_params", 0)),
        "total_params": int(params.get("total_params", 0)),
        "trainable_share": float(params.get("trainable_share", "nan")),
        "epochs_run": int(metrics.get(EPOCH, 0)),
        "max_epochs": int(params.get("train.epochs", 0)),
        "wall_seconds": (end - run.info.start_time) / 1000 if end else math.nan,
        "peak_mem_mb": metrics.get("sys/peak_mem_mb", math.nan),
        "cpus": float(params.get("resources.cpus", "nan")),
        "gpus": float(params.get("resources.gpus", "nan")),
        "workers": int(params.get("resources.num_workers", 1)),
    }
    for key, value in metrics.items():  # every other test metric too (test/fid, test/kid for text-to-image)
        if key.startswith("test/"):
            row.setdefault("test_" + key.removeprefix("test/").replace("/", "_"), value)
    for key, value in params.items():  # every hyperparameter, searched or fixed, and every method knob
        if key.startswith(("searched.", "train.", "method.")):
            row[key] = _number(value)
    return row


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
    trials = trials.copy()
    trials["is_best_in_cell"] = trials["run_id"].isin(chosen_trials(trials)["run_id"]) if len(trials) else []
    return trials


def cell_status(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per planned cell: trials ended vs budget, and whether it has a chosen trial."""
    ended = trials[trials["status"].isin(ENDED)].groupby("cell_key").size()
    chosen = set(chosen_trials(trials)["cell_key"])
    status = cells.copy()
    status["ended"] = status["cell_key"].map(ended).fillna(0).astype(int)
    status["complete"] = status["ended"] >= status["budget"]
    status["has_result"] = status["cell_key"].isin(chosen)
    return status


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over seeds (deterministic: seeded); one value is its own
    interval."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    return trust.paired_bootstrap_ci(values, level, resamples, seed)


PERCENT_METRICS = ("f1", "acc", "balanced_acc", "auroc")


SCORE_KEYS = ["task", "backbone", "dataset", "fraction", "method"]


def method_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (task, backbone, dataset, fraction, method): the chosen trials' test metric over seeds — mean, std,
    95% bootstrap CI, seeds — in display units (percent for F1, accuracies and AUROC), with the trainable share,
    the trivial classifier's score, whether the cell learned (beat it on validation and test by more than the
    noise, sweep.report.trust), whether any seed's training was still falling or chose an LR at the edge of its range,
    the gain over full fine-tuning (positive: better; only between cells that learned) and the winner of each
    dataset/fraction among the cells that learned. `oriented` is the mean signed so that higher is better."""
    chosen = trust.add_trivial(chosen_trials(trials))
    verdicts = trust.cell_verdicts(chosen, SCORE_KEYS).set_index(SCORE_KEYS) if len(chosen) else None
    rows = []
    for key, group in chosen.groupby(SCORE_KEYS, sort=True):
        metric = group["test_metric"].iloc[0]
        scale = 100.0 if metric.rsplit("/", 1)[-1] in PERCENT_METRICS else 1.0
        values = group["test_main"].dropna().to_numpy(dtype=float) * scale
        low, high = bootstrap_ci(values)
        higher = bool(group["test_higher_is_better"].iloc[0])
        mean = float(values.mean()) if len(values) else math.nan
        verdict = verdicts.loc[key]
        rows.append({
            **dict(zip(SCORE_KEYS, key, strict=True)),
            "metric": metric, "unit": "%" if scale == 100 else "", "higher_is_better": higher,
            "mean": mean, "oriented": mean if higher else -mean,
            "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "ci_low": low, "ci_high": high, "seeds": len(values),
            "trainable_share": float(group["trainable_share"].mean()),
            "trainable_params": int(group["trainable_params"].median()),
            "trivial": verdict["trivial_test"] * scale, "trivial_val": verdict["trivial_val"] * scale,
            "noise": verdict["noise_test"] * scale,
            "learned": trust.verdict(verdict["learned"]),
            "not_converged": bool(group["not_converged"].any()) if "not_converged" in group else False,
            "lr_at_edge": ",".join(sorted(set(group["lr_at_edge"]) - {""})) if "lr_at_edge" in group else "",
            "bn_mode": ",".join(sorted(set(group["bn_mode"].fillna("")) - {""})) if "bn_mode" in group else "",
        })
    scores = pd.DataFrame(rows, columns=[*SCORE_KEYS, "metric", "unit", "higher_is_better", "mean", "oriented",
                                         "std", "ci_low", "ci_high", "seeds", "trainable_share", "trainable_params",
                                         "trivial", "trivial_val", "noise", "learned", "not_converged", "lr_at_edge",
                                         "bn_mode"])
    where = ["task", "backbone", "dataset", "fraction"]
    scores["learned"] = pd.Series([trust.verdict(v) for v in scores["learned"]], index=scores.index, dtype=object)
    usable = scores["learned"].map(lambda v: v is not False).astype(bool)  # None: no trivial baseline (FID)
    full = scores[(scores["method"] == "full") & usable].set_index(where)["oriented"]
    index = pd.MultiIndex.from_frame(scores[where])
    scores["gain_vs_full"] = np.where(usable, scores["oriented"].to_numpy() - full.reindex(index).to_numpy(),
                                      np.nan)
    best = scores["oriented"].where(usable).groupby([scores[w] for w in where]).transform("max")
    scores["winner"] = usable & (scores["oriented"] == best)
    return scores


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method: device-hours spent, and trial-epochs run against what an exhaustive search would have run."""
    t = trials[trials["status"].isin(ENDED)].copy()
    seconds = t["wall_seconds"].fillna(0) * t["workers"].clip(lower=1)
    t["gpu_hours"] = seconds * t["gpus"].fillna(0) / 3600
    t["cpu_hours"] = seconds * t["cpus"].fillna(1) / 3600
    t["exhaustive_epochs"] = t["max_epochs"]
    table = t.groupby("method").agg(trials=("trial_key", "count"), stopped_early=("stopped_early", "sum"),
                                    epochs_run=("epochs_run", "sum"), exhaustive_epochs=("exhaustive_epochs", "sum"),
                                    gpu_hours=("gpu_hours", "sum"), cpu_hours=("cpu_hours", "sum"))
    table["epochs_ratio"] = table["epochs_run"] / table["exhaustive_epochs"].replace(0, np.nan)
    return table.reset_index()


def pareto_front(points: pd.DataFrame, x: str = "trainable_params", y: str = "oriented") -> pd.DataFrame:
    """The methods no other method beats with fewer (or as many) trainable parameters."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    front, best = [], -math.inf
    for _, row in ordered.iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def regimes(fractions: list[float]) -> dict[str, list[float]]:
    """Data regimes for recommendations: the smallest fraction below 1 is low data, other fractions below 1 are
    medium data, 1.0 is all data."""
    fractions = sorted(set(fractions))
    partial = [f for f in fractions if f < 1.0]
    named = {"low data": partial[:1], "medium data": partial[1:], "all data": [f for f in fractions if f >= 1.0]}
    return {name: values for name, values in named.items() if values}


def recommendations(scores: pd.DataFrame, paired: pd.DataFrame | None = None) -> list[str]:
    """Best method per backbone and data regime, among the cells that learned, worded with its evidence: how often
    it won, its margin over the runner-up, and the verdicts of its comparisons with full fine-tuning
    (sweep.report.comparisons)."""
    lines = []
    for (task, backbone), group in scores.groupby(["task", "backbone"], sort=True):
        for regime, fractions in regimes(group["fraction"].tolist()).items():
            part = group[group["fraction"].isin(fractions)]
            failed = part[part["learned"].map(lambda v: v is False)]
            usable = part.drop(failed.index)
            left_out = (f" Left out, as they did not beat the trivial classifier: "
                        f"{', '.join(f'{r.method} on {r.dataset} ({r.fraction:g})' for r in failed.itertuples())}."
                        if len(failed) else "")
            cells = usable.groupby(["dataset", "fraction"])
            wins = usable[usable["winner"]].groupby("method").size().sort_values(ascending=False)
            if wins.empty:
                if len(failed):
                    lines.append(f"{backbone} ({task}), {regime}: no recommendation, no method learned.{left_out}")
                continue

            def margins(candidate: str, cells=cells) -> list[float]:
                """Per cell where it ran: the candidate's score minus the best other method's."""
                out = []
                for _, cell in cells:
                    others = cell[cell["method"] != candidate].sort_values("oriented", ascending=False)
                    ours = cell[cell["method"] == candidate]
                    if not others.empty and not ours.empty:
                        out.append(ours.iloc[0]["oriented"] - others.iloc[0]["oriented"])
                return out

            # Most cells won; between methods that won as many, the larger mean margin (not the order of names).
            tied = {m: margins(m) for m in wins.index if wins[m] == wins.iloc[0]}
            method = max(tied, key=lambda m: np.mean(tied[m]) if tied[m] else -np.inf)
            runner = tied[method]
            mine = usable[usable["method"] == method]
            unit = " points" if mine["unit"].iloc[0] == "%" else ""
            evidence = (f"best {mine['metric'].iloc[0]} in {int(wins.iloc[0])} of {cells.ngroups} dataset/fraction "
                        f"cells that learned" + (f"; mean difference to the best other method {np.mean(runner):+.1f}{unit}"
                                                 if runner else ""))
            noise = float(mine["noise"].mean())
            if runner and noise == noise and abs(np.mean(runner)) < noise:
                evidence += (f", within the test set's sampling noise (±{noise:.1f}{unit}): on this data the methods "
                             "cannot be ranked")
            against = _against_full(paired, task, backbone, method, fractions) if method != "full" else ""
            lines.append(f"{backbone} ({task}), {regime} (fraction {', '.join(f'{f:g}' for f in fractions)}): "
                         f"**{method}** — {evidence}{against}.{left_out}")
    return lines


def _against_full(paired: pd.DataFrame | None, task: str, backbone: str, method: str, fractions: list[float]) -> str:
    if paired is None or paired.empty:
        return ""
    mine = paired[(paired["task"] == task) & (paired["backbone"] == backbone) & (paired["method"] == method)
                  & paired["fraction"].isin(fractions)]
    if mine.empty:
        return ""
    skipped = mine[mine["verdict"].str.startswith("not compared")]
    mine = mine.drop(skipped.index)
    if mine.empty:
        return f"; not compared with full fine-tuning ({skipped['verdict'].iloc[0].removeprefix('not compared: ')})"
    verdicts = mine["verdict"].value_counts()
    unit = " points" if mine["unit"].iloc[0] == "%" else ""
    if set(verdicts.index) == {"cannot tell (one seed)"}:
        return (f"; against full fine-tuning {mine['mean_diff'].mean():+.1f}{unit}, but with one seed per cell "
                "the difference cannot be told from seed noise")
    parts = ", ".join(f"{n} {v}" for v, n in verdicts.items())
    return f"; against full fine-tuning: mean {mine['mean_diff'].mean():+.1f}{unit} ({parts})"
