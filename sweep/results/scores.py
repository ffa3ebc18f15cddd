"""Per method line (task, backbone, dataset, fraction, method: a cell over its seeds): the chosen trials' test
metric over seeds with its bootstrap interval, the trivial classifier's score and whether the line learned."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sweep.results import trust
from sweep.results.cell_outcome import cell_outcomes


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


def method_scores(trials: pd.DataFrame, outcomes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (task, backbone, dataset, fraction, method): the chosen trials' test metric over seeds — mean, std,
    95% bootstrap CI, seeds — in display units (percent for F1, accuracies and AUROC), with the trainable share,
    the trivial classifier's score, whether the cell learned (beat it on validation and test by more than the
    noise, sweep.results.trust), whether any seed's training was still falling or chose an LR at the edge of its range,
    the gain over full fine-tuning (positive: better; only between cells that learned) and the winner of each
    dataset/fraction among the cells that learned. `oriented` is the mean signed so that higher is better.
    `outcomes`: cell_outcomes(trials), where the caller has it already."""
    chosen = cell_outcomes(trials) if outcomes is None else outcomes
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
