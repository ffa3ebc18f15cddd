"""The report's tables beyond the per-cell outcome (sweep.results): cost per method, the Pareto front of trainable
parameters against score, and the recommendations per backbone and data regime."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trainables.contract import ENDED


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
    (sweep.results.comparisons)."""
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
