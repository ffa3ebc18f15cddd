"""The report's figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.ticker import NullFormatter

matplotlib.use("Agg")  # before pyplot: no display needed
import matplotlib.pyplot as plt

from sweep.report.analysis import pareto_front


def data_volume(scores: pd.DataFrame, path: Path, title: str) -> Path:
    """Test metric against training fraction, one line per method (error bars: std over seeds)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method, group in scores.sort_values("fraction").groupby("method", sort=True):
        style = {"linewidth": 2.6, "color": "black"} if method == "full" else {"linewidth": 1.4}
        ax.errorbar(group["fraction"], group["mean"], yerr=group["std"].fillna(0), marker="o",
                    markersize=4, capsize=2, label=method, **style)
    ax.set_xscale("log")
    fractions = sorted(scores["fraction"].unique())
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("fraction of the training set")
    ax.set_ylabel(_label(scores))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    return _save(fig, path)


def pareto(points: pd.DataFrame, path: Path, title: str) -> Path:
    """Test metric against trainable parameters (log scale), with the Pareto front."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.scatter(points["trainable_params"], points["mean"], s=28, zorder=3)
    for _, row in points.iterrows():
        ax.annotate(row["method"], (row["trainable_params"], row["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    front = pareto_front(points)
    ax.step(front["trainable_params"], front["mean"], where="post", color="tab:red", linewidth=1.2,
            marker="s", markersize=7, markerfacecolor="none", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(_label(points))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def study_volume(curves: pd.DataFrame, path: Path, title: str) -> Path:
    """The study's data-volume curves (dashed) beside ours (solid, where run), one panel per backbone."""
    backbones = list(dict.fromkeys(curves["study_backbone"]))
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4.0), dpi=110, squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        part = curves[curves["study_backbone"] == backbone].sort_values("fraction")
        for i, (method, group) in enumerate(part.groupby("study_method", sort=True)):
            color = f"C{i}"
            ax.plot(group["fraction"], group["published"], linestyle="--", marker="o", markersize=3, color=color,
                    label=f"{method} (study)")
            if group["ours"].notna().any():
                ax.plot(group["fraction"], group["ours"], linestyle="-", marker="s", markersize=4, color=color,
                        linewidth=2, label=f"{method} (ours)")
        ax.set_xscale("log")
        fractions = sorted(part["fraction"].unique())
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel("test F1 (%)")
        ax.set_title(f"{title}, {backbone}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def lr_axis(trials: pd.DataFrame, path: Path, title: str) -> Path:
    """The Deep Learning Tuning Playbook's "basic hyperparameter axis plot": every trial's best validation score
    against its learning rate, one colour per method, each cell's chosen trial marked (a ringed star). A method
    whose best points sit at an end of the axis was searched too narrowly; a cliff beyond them, where trials
    failed, is its stability edge (failed trials: crosses at the bottom)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    scored = trials[trials["score"].notna()]
    floor = scored["score"].min() if len(scored) else 0.0
    for i, (method, group) in enumerate(trials.groupby("method", sort=True)):
        color = f"C{i % 10}"
        ok = group[group["score"].notna()]
        ax.scatter(ok["searched.lr"], ok["score"], s=16, color=color, alpha=0.7, label=method)
        best = ok[ok["is_best_in_cell"].astype(bool)]
        ax.scatter(best["searched.lr"], best["score"], s=90, marker="*", color=color, edgecolors="black",
                   linewidths=0.8, zorder=3)
        failed = group[group["score"].isna()]
        ax.scatter(failed["searched.lr"], [floor] * len(failed), s=24, marker="x", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best validation score (SCORE, higher is better)")
    ax.set_title(title + "  (stars: chosen; crosses: failed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    return _save(fig, path)


def _label(scores: pd.DataFrame) -> str:
    unit = " (%)" if scores["unit"].iloc[0] == "%" else ""
    better = "higher" if scores["higher_is_better"].iloc[0] else "lower"
    return f"{scores['metric'].iloc[0]}{unit}, {better} is better"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def critical_difference(ranks: pd.Series, holm: pd.DataFrame, path: Path, title: str) -> Path:
    """Critical-difference diagram (scikit-posthocs): mean ranks on an axis, methods whose Holm-corrected pairwise
    Wilcoxon p is above 0.05 joined by a bar."""
    import scikit_posthocs

    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.28 * len(ranks)), dpi=110)
    scikit_posthocs.critical_difference_diagram(ranks, holm, ax=ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
