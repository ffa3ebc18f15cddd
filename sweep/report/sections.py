"""The report's sections, one renderer each: what build.py puts into the document, in its order (the
reproduction section is sweep/report/reproduction.py's, beside what it computes)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sweep.report import analysis, plots
from sweep.report.document import Document
from sweep.results import comparisons, trust
from sweep.tune.rounds import AT_HIGH, AT_LOW, FLAT, INTERIOR, STABILITY

# How a cell's learning-rate search ended (sweep/tune/rounds.py EDGE_KINDS), in the report's words.
EDGE_WORDS = {INTERIOR: "inside the range searched", STABILITY: "at a stability edge (larger learning rates diverged)",
              FLAT: "on a flat range", AT_HIGH: "at the high edge", AT_LOW: "at the low edge"}


def overview(doc: Document, trials: pd.DataFrame, status: pd.DataFrame) -> None:
    states = trials["status"].value_counts().to_dict() if len(trials) else {}
    selections = sorted({f"{v} (test: {t})" for v, t in zip(trials["val_metric"], trials["test_metric"],
                                                              strict=True)}) if len(trials) else []
    doc.text(
        f"{len(status)} cells, {int(status['complete'].sum()) if len(status) else 0} complete; {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}). Each cell's trial is chosen on its "
        f"validation metric alone ({'; '.join(selections)}); the tables show those trials' test metric as "
        "mean ± std over seeds with a 95% interval [low, high] (F1, accuracies and AUROC in percent) over the test "
        "images and the seeds, as the comparisons below count them (a bootstrap of the test images, the seeds' "
        "spread at its t quantile: sweep.results.comparisons.score_interval); over the seeds alone where a line left "
        "no per-image predictions."
    )
    incomplete = status[~status["complete"]] if len(status) else status
    if len(incomplete):
        doc.heading("Incomplete cells")
        doc.text(f"{len(incomplete)} of {len(status)} cells have not finished every trial; their numbers (if any) "
                 "may still change. Resume the sweep with `python -m sweep.launch --name <sweep> --resume`.")
        doc.table(pd.DataFrame({
            "cell": incomplete["cell_key"],
            "trials ended": [f"{e}/{b}" for e, b in zip(incomplete["ended"], incomplete["budget"], strict=True)],
            "has a result": ["yes" if h else "no" for h in incomplete["has_result"]],
        }))


def _fmt(row) -> str:
    text = f"{row['mean']:.1f}"
    if row["seeds"] > 1:
        text += f" ± {row['std']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
    text = f"**{text}**" if row["winner"] else text
    if row["learned"] is False:
        text += " (did not learn)"
    return text + ("†" if row["not_converged"] else "") + ("‡" if row["lr_at_edge"] else "")


def did_not_learn(doc: Document, scores: pd.DataFrame) -> None:
    """The cells whose chosen trial did not beat the trivial classifier, before any table that ranks methods."""
    failed = scores[scores["learned"].map(lambda v: v is False)]
    if failed.empty:
        return
    doc.heading("Cells that did not learn")
    doc.text(f"{len(failed)} of {len(scores)} cells did not beat the trivial classifier (the best of always the "
             "majority class and random guesses, on the same metric) by more than the noise on validation and test. "
             "They are marked in the tables and left out of every comparison with full fine-tuning, every 'best "
             "method' and the recommendations: a method that did not learn says nothing about PEFT, and a baseline "
             "that did not learn makes every gain against it meaningless.")
    doc.table(pd.DataFrame({
        "backbone": failed["backbone"], "dataset": failed["dataset"], "fraction": failed["fraction"].map(lambda f: f"{f:g}"),
        "method": failed["method"], "test": failed["mean"].map(lambda v: f"{v:.1f}"),
        "trivial classifier": failed["trivial"].map(lambda v: f"{v:.1f}"),
        "not converged": failed["not_converged"].map({True: "yes", False: ""}),
        "LR at the edge": failed["lr_at_edge"],
    }))


def main_table(doc: Document, task: str, backbone: str, scores: pd.DataFrame) -> None:
    fraction = scores["fraction"].max()
    part = scores[scores["fraction"] == fraction]
    metric, unit = part["metric"].iloc[0], part["unit"].iloc[0]
    datasets = sorted(part["dataset"].unique())
    order = part.groupby("method")["oriented"].mean().sort_values(ascending=False).index.tolist()
    order = [m for m in ("full", "linear") if m in order] + [m for m in order if m not in ("full", "linear")]
    rows = []
    trivial = part.groupby("dataset")["trivial"].first()
    if trivial.notna().any():
        rows.append({"method": "trivial classifier", **{d: f"{trivial.get(d, math.nan):.1f}" for d in datasets},
                     "trainable %": "0", "Δ vs full": "-", **({"BatchNorm stats": "-"} if task == "classification"
                                                              else {})})
    for method in order:
        mine = part[part["method"] == method].set_index("dataset")
        row = {"method": method}
        for dataset in datasets:
            row[dataset] = _fmt(mine.loc[dataset]) if dataset in mine.index else "-"
        row["trainable %"] = f"{mine['trainable_share'].mean() * 100:.3g}"
        gain = mine["gain_vs_full"].mean()
        row["Δ vs full"] = "-" if method == "full" or math.isnan(gain) else f"{gain:+.1f}"
        if task == "classification":
            row["BatchNorm stats"] = ",".join(sorted(set(mine["bn_mode"]) - {""})) or "-"
        rows.append(row)
    direction = "higher" if part["higher_is_better"].iloc[0] else "lower"
    doc.heading(f"{backbone} ({task}): {metric}{' (%)' if unit else ''} with {fraction:.0%} of the training data")
    legend = (f"Bold: the best method for that dataset among those that learned ({direction} is better). Δ vs full: "
              f"mean difference to full fine-tuning across the datasets where both learned"
              f"{' in percentage points' if unit else ''} (positive: better; compared on the test images in "
              "'Comparisons' below). The trivial classifier row is what a model that ignores the image scores. "
              "(did not learn): no better than it; †: not converged, the chosen trial's best validation score still "
              "rising over its last epochs by more than its standard error on the validation images (train longer; the "
              "rule by which the search rounds double the epochs, trainables/contract.py still_improving); ‡: the "
              "chosen learning rate is at an edge of the range searched that is neither a stability edge nor a flat "
              "range (widen it).")
    if task == "classification":
        legend += (" BatchNorm stats: whether the BatchNorm running statistics were updated in training (train) or "
                   "kept as pretrained (eval).")
    doc.text(legend)
    doc.table(pd.DataFrame(rows))


def comparisons_section(doc: Document, compared: pd.DataFrame, rope: float, with_predictions: int, chosen: int) -> None:
    if compared.empty:
        return
    doc.heading("Comparisons: PEFT against full fine-tuning, and the best method against the runner-up")
    on_images = compared["basis"] == comparisons.BASIS_IMAGES
    text = ("Each comparison is on the same backbone, dataset and fraction (Δ positive: the method is better than "
            "the reference). ")
    if on_images.any():
        text += ("Where the trials left per-image predictions, the interval is a paired bootstrap over the test "
                 f"images and the seeds ({comparisons.RESAMPLES} resamples): each resample draws the test images "
                 "(patient or lesion groups whole; the same draw for both methods and every seed) and the seeds "
                 "(a drawn seed brings both methods' predictions of it), scores both methods' drawn seeds on the "
                 "drawn images, and takes the difference of their seed means (P(better) is the share of resamples where "
                 "the method is ahead). The interval adds two half-widths in quadrature: what the seeds' spread holds "
                 "(each seed's own expected score and its own errors on the images), with a t quantile for its few "
                 "degrees of freedom (4.30 at three seeds), and the images' part that all seeds share, with a normal "
                 "quantile. In simulations with known truth (80-600 test images, 3 seeds) it covers the true "
                 "difference 96% of the time with no seed variation and with seed SDs of 1.4 and 2.8 F1 points; "
                 "with few seeds it is wide, by design. "
                 f"Verdicts: better or worse when the 95% interval excludes zero, equivalent when it lies within "
                 f"±{rope:g} points (report.rope), undecided otherwise. 'seeds ahead': the seeds (paired: the same "
                 "seed draws the same training subset) on which the method scored higher on the whole test set; "
                 f"sign and Wilcoxon tests over seeds are shown from {trust.MIN_SEEDS_FOR_TESTS} seeds on (with n "
                 "seeds the smallest two-sided p is 2/2^n). With one seed the interval is the test images' alone: "
                 "seed variation is not in it. ")
    if (~on_images).any():
        missing = chosen - with_predictions
        text += (f"{int((~on_images).sum())} of {len(compared)} comparisons fall back to the seeds alone ({missing} "
                 f"of {chosen} chosen trials left no per-image predictions, e.g. a sweep from "
                 "before they were logged, or their metric cannot be recomputed from them): the mean of the "
                 "per-seed differences with a bootstrap interval over the seeds, which misses the test images' "
                 "sampling noise and with three seeds is their [min, max] (75% coverage, not 95%).")
    doc.text(text)
    doc.table(comparison_table(compared))


def comparison_table(compared: pd.DataFrame) -> pd.DataFrame:
    """The comparisons (sweep.results.comparisons.from_results) as report.md prints them: the committed study's
    test reads its table back against this."""
    return pd.DataFrame({
        "backbone": compared["backbone"], "dataset": compared["dataset"],
        "fraction": compared["fraction"].map(lambda f: f"{f:g}"), "method": compared["method"],
        "against": compared["reference"], "seeds": compared["seeds"],
        "test images": compared["images"].map(lambda n: "-" if pd.isna(n) else f"{int(n)}"),
        "Δ": compared["mean_diff"].map(lambda v: f"{v:+.1f}"),
        "95% CI": [("-" if math.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]")
                   for lo, hi in zip(compared["ci_low"], compared["ci_high"], strict=True)],
        "P(better)": compared["p_better"].map(lambda p: "-" if pd.isna(p) else f"{p:.2f}"),
        "seeds ahead": compared["ahead"],
        "sign p": compared["sign_p"].map(lambda p: "-" if pd.isna(p) else f"{p:.3g}"),
        "Wilcoxon p": compared["wilcoxon_p"].map(lambda p: "-" if pd.isna(p) else f"{p:.3g}"),
        "verdict": compared["verdict"],
        "interval over": compared["interval_over"],
        **({"seeds: why": compared["seeds_why"]} if "seeds_why" in compared else {}),
    })


def seeds_why(seeds: int, verdict: str, initial: int, most: int) -> str:
    """Why a comparison has the seeds it has, under adaptive seeds."""
    if seeds > initial:
        return (f"{seeds - initial} added while undecided; still undecided at the most allowed" if verdict ==
                "undecided" and seeds >= most else f"{seeds - initial} added while undecided, then {verdict}")
    if verdict == "undecided":
        # Below the most allowed, an undecided comparison gets a seed as soon as its cells end; one that has none
        # was decided when the sweep asked (statistics since changed) or the sweep stopped before it asked.
        return (f"undecided at {seeds}, below the most allowed ({most}): no seed added while the sweep ran"
                if seeds < most else "the most allowed")
    return f"the initial {initial}: decided ({verdict})"


def across_datasets(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
    rankings = comparisons.across_datasets(scores)
    if not rankings:
        return
    doc.heading("Across datasets")
    lines = []
    for r in rankings:
        n = len(r.scores)
        lines.append(
            f"{r.backbone} ({r.task}), fraction {r.fraction:g}, {n} datasets: **{r.best}** ranks first (mean rank "
            f"{r.ranks[r.best]:.2f}), ahead of {r.runner_up} ({r.ranks[r.runner_up]:.2f}) on {r.ahead} datasets; "
            f"Wilcoxon signed-rank over the datasets p = {r.wilcoxon_p:.3g}. With {n} datasets the smallest "
            f"two-sided p any such test can give is {r.smallest_p:.3g}"
            + (": a ranking over so few datasets is descriptive, not a finding." if r.smallest_p >= 0.05 else "."))
        name = slug(f"cd-{r.backbone}-{r.fraction:g}") + ".png"
        plots.critical_difference(r.ranks, r.holm, out / name,
                                  f"{r.backbone}, fraction {r.fraction:g}: mean rank over {n} datasets")
        files.append(out / name)
    doc.bullets(lines)
    doc.text("Critical-difference diagrams: each method at its mean rank over the datasets (1 = best); methods "
             "joined by a bar are not told apart by pairwise Wilcoxon signed-rank tests with Holm's correction "
             "(p > 0.05; Benavoli et al., JMLR 2016, prefer these to the Nemenyi test). Only cells that learned "
             "count, and only methods run on every dataset.")
    for r in rankings:
        name = slug(f"cd-{r.backbone}-{r.fraction:g}") + ".png"
        doc.image(out / name, f"Critical-difference diagram: {r.backbone} ({r.task}), fraction {r.fraction:g}")


def data_volume(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
    if scores["fraction"].nunique() < 2:
        return
    doc.heading("Data-volume study")
    for (_task, backbone, dataset), group in scores.groupby(["task", "backbone", "dataset"], sort=True):
        name = slug(f"volume-{backbone}-{dataset}") + ".png"
        plots.data_volume(group, out / name, f"{dataset}, {backbone}")
        files.append(out / name)
        doc.image(out / name, f"{group['metric'].iloc[0]} against training fraction: {dataset}, {backbone}")


def pareto(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
    doc.heading("Test metric against trainable parameters")
    for (_task, backbone, dataset), group in scores.groupby(["task", "backbone", "dataset"], sort=True):
        part = group[group["fraction"] == group["fraction"].max()]
        name = slug(f"pareto-{backbone}-{dataset}") + ".png"
        plots.pareto(part, out / name, f"{dataset}, {backbone} (fraction {part['fraction'].iloc[0]:g})")
        files.append(out / name)
        doc.image(out / name, f"{part['metric'].iloc[0]} against trainable parameters, Pareto front in red: "
                              f"{dataset}")


def lr_search(doc: Document, trials: pd.DataFrame, cells: pd.DataFrame, out: Path, files: list[Path]) -> None:
    """Per dataset and backbone, the learning-rate axis plot; then the cells whose search still ended at an edge
    of its range, and which kind of edge (sweep/tune/rounds.py; written on the cell runs by the launcher)."""
    if "searched.lr" not in trials or trials["searched.lr"].isna().all():
        return
    doc.heading("Learning-rate search")
    for (_task, backbone, dataset), group in trials[trials["searched.lr"].notna()].groupby(
            ["task", "backbone", "dataset"], sort=True):
        name = slug(f"lr-{backbone}-{dataset}") + ".png"
        plots.lr_axis(group, out / name, f"{dataset}, {backbone}")
        files.append(out / name)
        doc.image(out / name, f"best validation score of every trial against its learning rate: {dataset}, "
                              f"{backbone}")
    if "search_edge" not in cells:
        return
    # The other searched knobs' edges come from the trials table (trust.knobs_at_edge: the rounds' check,
    # recomputable from results.parquet), the learning rate's kind of edge from the cell runs (only the rounds
    # know a stability edge from a limit).
    chosen = trials[trials["is_best_in_cell"]] if "knobs_at_edge" in trials else trials.iloc[:0]
    knobs = dict(zip(chosen["cell_key"], chosen.get("knobs_at_edge", pd.Series(dtype=object)), strict=True))
    knobs = {cell: text for cell, text in knobs.items() if text}
    kinds = cells.loc[cells["search_edge"].astype(bool), "search_edge"].value_counts()  # "": search not ended yet
    if kinds.sum():
        ended = ", ".join(f"{int(kinds.get(kind, 0))} {words}" for kind, words in EDGE_WORDS.items())
        settled = int(kinds.get(INTERIOR, 0) + kinds.get(STABILITY, 0))
        doc.text(f"How the {int(kinds.sum())} cells' searches ended: {ended}. Inside the range or at a stability edge: "
                 f"{settled} ({settled / kinds.sum():.0%}); with the flat ranges: "
                 f"{settled + int(kinds.get(FLAT, 0))} ({(settled + kinds.get(FLAT, 0)) / kinds.sum():.0%}).")
    notes = cells["search_note"] if "search_note" in cells else pd.Series("", index=cells.index)
    capped = notes.fillna("").astype(str).str.contains("search.max_trial_epochs", regex=False)
    if capped.any():
        doc.text(f"{int(capped.sum())} cells' searches were cut short by the sweep's cap (search.max_trial_epochs): "
                 "a round that could have passed it was not run (an extension: the cell stays at its edge; a "
                 "doubling: its choice stays marked †); each one's note says which.")
    at_lr_edge = cells["search_edge"].isin([STABILITY, FLAT, AT_HIGH, AT_LOW])
    edge = cells[at_lr_edge | cells["cell_key"].isin(knobs)]
    if len(edge):
        doc.text(f"{int(at_lr_edge.sum())} of {len(cells)} cells ended their search at an edge of the learning rates "
                 "tried or on a flat range (stability: larger ones diverged; flat: every learning rate tried scored "
                 "the same within the validation set's noise, after every extension allowed; high/low: the limits, "
                 "search.max_extensions or search.max_trial_epochs stopped it)"
                 + (f"; {len(knobs)} chose another searched knob at the highest or lowest value tried (reported "
                    "only: the search widens the learning rate's range, no other)" if knobs else "") + ":")
        table = edge[["cell_key", "search_edge", "search_note", "search"]].rename(columns={
            "cell_key": "cell", "search_edge": "edge", "search_note": "why", "search": "rounds"})
        table["edge"] = [e if a else "" for e, a in zip(table["edge"], at_lr_edge[edge.index], strict=True)]
        table["why"] = [w if a else "" for w, a in zip(table["why"], at_lr_edge[edge.index], strict=True)]
        if knobs:
            table.insert(3, "other knobs at an edge", edge["cell_key"].map(knobs).fillna("").to_numpy())
        doc.table(table)
    elif cells["search_edge"].astype(bool).any():
        doc.text("Every cell's chosen learning rate is inside the range its search tried, and so is every other "
                 "searched knob's value.")


def cost(doc: Document, trials: pd.DataFrame) -> None:
    cost = analysis.cost_table(trials)
    if cost.empty:
        return
    ran, exhaustive = int(cost["epochs_run"].sum()), int(cost["exhaustive_epochs"].sum())
    doc.heading("Cost")
    doc.text(f"The sweep ran {ran:,} trial-epochs where an exhaustive search would have run {exhaustive:,} "
             f"({ran / max(exhaustive, 1):.0%}).")
    doc.table(pd.DataFrame({
        "method": cost["method"], "trials": cost["trials"], "stopped early": cost["stopped_early"],
        "trial-epochs": [f"{r}/{e}" for r, e in zip(cost["epochs_run"], cost["exhaustive_epochs"], strict=True)],
        "GPU-hours": cost["gpu_hours"].map(lambda h: f"{h:.3f}"),
        "CPU-hours": cost["cpu_hours"].map(lambda h: f"{h:.3f}"),
    }))




def slug(text: str) -> str:
    """A text as a file name: anything but letters, digits, -, _ and . becomes _."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
