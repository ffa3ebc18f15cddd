"""From MLflow runs to the study's numbers: the per-trial table, each cell's chosen trial (on validation only),
and the tables of the report. Pure functions of DataFrames, so every number can be recomputed from
`results.parquet`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sweep import tracking

CELL_FIELDS = ["task", "dataset", "backbone", "method", "fraction", "seed"]
TERMINAL = ("finished", "stopped_early", "failed")


def trials_table(uri: str, sweep: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per trial, one row per planned cell) of a sweep, from MLflow."""
    mlflow = tracking.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        raise LookupError(f"MLflow at {uri} has no sweep named {sweep!r}")
    trial_runs = tracking.search_all(mlflow, experiment.experiment_id, "tags.role = 'trial'")
    cell_runs = tracking.search_all(mlflow, experiment.experiment_id, "tags.role = 'cell'")
    rows = pd.DataFrame([_trial_row(sweep, run) for run in trial_runs])
    trials = rows.reindex(columns=[*_TRIAL_COLUMNS, *[c for c in rows.columns if c not in _TRIAL_COLUMNS]])
    cells = pd.DataFrame([{
        "cell_key": run.data.tags["cell_key"],
        "cell_run_id": run.info.run_id,
        "budget": int(run.data.params.get("budget", 0)),
        **{f: run.data.tags.get(f, "") for f in CELL_FIELDS},
    } for run in cell_runs])
    if not cells.empty:
        cells["fraction"] = cells["fraction"].astype(float)
        cells["seed"] = cells["seed"].astype(int)
    trials = mark_best_in_cell(trials)
    return trials.sort_values(["cell_key", "trial_key"]).reset_index(drop=True), cells


_TRIAL_COLUMNS = [
    "sweep", "trial_key", "cell_key", "run_id", *CELL_FIELDS, "status", "stopped_early", "failure_reason",
    "score", "val_metric", "val_best", "val_best_loss", "test_metric", "test_higher_is_better", "test_main",
    "test_acc", "test_balanced_acc", "test_auroc", "test_loss",
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
        "trial_key": tags.get("trial_key"),
        "cell_key": tags.get("cell_key"),
        "run_id": run.info.run_id,
        "task": tags.get("task", ""),
        "dataset": tags.get("dataset", ""),
        "backbone": tags.get("backbone", ""),
        "method": tags.get("method", ""),
        "fraction": float(tags.get("fraction", "nan")),
        "seed": int(tags.get("seed", -1)),
        "status": tags.get("status", "running"),
        "stopped_early": tags.get("status") == "stopped_early",
        "failure_reason": tags.get("failure_reason", ""),
        "score": metrics.get("score", math.nan),
        "val_metric": val_key,
        "val_best": metrics.get(val_key, math.nan),
        "val_best_loss": metrics.get("val/best_loss", math.nan),
        "test_metric": test_key,
        "test_higher_is_better": params.get("selection.test_higher_is_better", "True") == "True",
        "test_main": metrics.get(test_key, math.nan),
        "test_acc": metrics.get("test/acc", math.nan),
        "test_balanced_acc": metrics.get("test/balanced_acc", math.nan),
        "test_auroc": metrics.get("test/auroc", math.nan),
        "test_loss": metrics.get("test/loss", math.nan),
        "trainable_params": int(params.get("trainable_params", 0)),
        "total_params": int(params.get("total_params", 0)),
        "trainable_share": float(params.get("trainable_share", "nan")),
        "epochs_run": int(metrics.get("epoch", 0)),
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
    """Each cell's chosen trial: the best validation score among trials that ran to the end (`score`: higher is
    better, whatever the task); ties go to the lower validation loss at that epoch. Test metrics play no part."""
    finished = trials[(trials["status"] == "finished") & trials["score"].notna()]
    ordered = finished.sort_values(["cell_key", "score", "val_best_loss", "trial_key"],
                                   ascending=[True, False, True, True], kind="stable")
    return ordered.groupby("cell_key", sort=True).head(1).reset_index(drop=True)


def mark_best_in_cell(trials: pd.DataFrame) -> pd.DataFrame:
    trials = trials.copy()
    trials["is_best_in_cell"] = trials["run_id"].isin(chosen_trials(trials)["run_id"]) if len(trials) else []
    return trials


def cell_status(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per planned cell: trials ended vs budget, and whether it has a chosen trial."""
    ended = trials[trials["status"].isin(TERMINAL)].groupby("cell_key").size()
    chosen = set(chosen_trials(trials)["cell_key"])
    status = cells.copy()
    status["ended"] = status["cell_key"].map(ended).fillna(0).astype(int)
    status["complete"] = status["ended"] >= status["budget"]
    status["has_result"] = status["cell_key"].isin(chosen)
    return status


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (deterministic: seeded)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


PERCENT_METRICS = ("f1", "acc", "balanced_acc", "auroc")


def method_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (task, backbone, dataset, fraction, method): the chosen trials' test metric over seeds — mean, std,
    95% bootstrap CI, seeds — in display units (percent for accuracies and AUROC), with the trainable share, the
    gain over full fine-tuning (positive: better, in display units) and the winner of each dataset/fraction.
    `oriented` is the mean signed so that higher is better (FID is lower-is-better)."""
    chosen = chosen_trials(trials)
    keys = ["task", "backbone", "dataset", "fraction", "method"]
    rows = []
    for key, group in chosen.groupby(keys, sort=True):
        metric = group["test_metric"].iloc[0]
        scale = 100.0 if metric.rsplit("/", 1)[-1] in PERCENT_METRICS else 1.0
        values = group["test_main"].dropna().to_numpy(dtype=float) * scale
        low, high = bootstrap_ci(values)
        higher = bool(group["test_higher_is_better"].iloc[0])
        mean = float(values.mean()) if len(values) else math.nan
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "metric": metric, "unit": "%" if scale == 100 else "", "higher_is_better": higher,
            "mean": mean, "oriented": mean if higher else -mean,
            "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "ci_low": low, "ci_high": high, "seeds": len(values),
            "trainable_share": float(group["trainable_share"].mean()),
            "trainable_params": int(group["trainable_params"].median()),
        })
    scores = pd.DataFrame(rows, columns=[*keys, "metric", "unit", "higher_is_better", "mean", "oriented", "std",
                                         "ci_low", "ci_high", "seeds", "trainable_share", "trainable_params"])
    where = ["task", "backbone", "dataset", "fraction"]
    full = scores[scores["method"] == "full"].set_index(where)["oriented"]
    index = pd.MultiIndex.from_frame(scores[where])
    scores["gain_vs_full"] = scores["oriented"].to_numpy() - full.reindex(index).to_numpy()
    scores["winner"] = scores["oriented"] == scores.groupby(where)["oriented"].transform("max")
    return scores


def peft_vs_full(scores: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and fraction: the best PEFT method against full fine-tuning (margin: positive is better)."""
    rows = []
    for key, group in scores.groupby(["task", "backbone", "dataset", "fraction"], sort=True):
        full = group[group["method"] == "full"]
        peft = group[group["method"] != "full"].sort_values("oriented", ascending=False)
        if full.empty or peft.empty:
            continue
        best, reference = peft.iloc[0], full.iloc[0]
        rows.append({
            "task": key[0], "backbone": key[1], "dataset": key[2], "fraction": key[3],
            "best_peft": best["method"], "best_peft_mean": best["mean"], "full_mean": reference["mean"],
            "margin": best["oriented"] - reference["oriented"], "unit": best["unit"],
            "peft_wins": bool(best["oriented"] > reference["oriented"]),
            # With one seed there is no interval to compare.
            "ci_overlap": (None if min(best["seeds"], reference["seeds"]) < 2 else
                           bool(best["ci_low"] <= reference["ci_high"] and reference["ci_low"] <= best["ci_high"])),
        })
    return pd.DataFrame(rows)


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method: device-hours spent, and trial-epochs run against what an exhaustive search would have run."""
    t = trials[trials["status"].isin(TERMINAL)].copy()
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


def recommendations(scores: pd.DataFrame) -> list[str]:
    """Best method per backbone and data regime, worded with its evidence."""
    lines = []
    for (task, backbone), group in scores.groupby(["task", "backbone"], sort=True):
        for regime, fractions in regimes(group["fraction"].tolist()).items():
            part = group[group["fraction"].isin(fractions)]
            cells = part.groupby(["dataset", "fraction"])
            wins = part[part["winner"]].groupby("method").size().sort_values(ascending=False)
            if wins.empty:
                continue
            method = wins.index[0]
            mine = part[part["method"] == method]
            runner = []
            for (_dataset, _fraction), cell in cells:
                others = cell[cell["method"] != method].sort_values("oriented", ascending=False)
                ours = cell[cell["method"] == method]
                if others.empty or ours.empty:
                    continue
                o, r = ours.iloc[0], others.iloc[0]
                runner.append({"margin": o["oriented"] - r["oriented"],
                               "overlap": o["ci_low"] <= r["ci_high"] and r["ci_low"] <= o["ci_high"],
                               "single_seed": o["seeds"] < 2})
            margin = np.mean([r["margin"] for r in runner]) if runner else math.nan
            overlaps = sum(r["overlap"] for r in runner)
            single = all(r["single_seed"] for r in runner) if runner else True
            gain = mine["gain_vs_full"].mean()
            unit = " points" if mine["unit"].iloc[0] == "%" else ""
            metric = mine["metric"].iloc[0]
            evidence = (f"best {metric} in {int(wins.iloc[0])} of {cells.ngroups} dataset/fraction cells; mean "
                        f"margin over the runner-up {margin:+.1f}{unit}" if runner
                        else f"best in {int(wins.iloc[0])} cells")
            if method != "full" and not math.isnan(gain):
                evidence += f", {gain:+.1f}{unit} against full fine-tuning"
            confidence = ("one seed per cell, so no confidence interval: treat as a hint" if single else
                          f"95% CIs overlap the runner-up's in {overlaps} of {len(runner)} cells")
            lines.append(f"{backbone} ({task}), {regime} (fraction {', '.join(f'{f:g}' for f in fractions)}): "
                         f"**{method}** — {evidence}; {confidence}.")
    return lines
