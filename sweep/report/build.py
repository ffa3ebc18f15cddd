"""`python -m sweep.report`: a sweep's runs in MLflow become the study's tables and plots.

    python -m sweep.report --name quickstart                       # -> results/quickstart/report/
    python -m sweep.report --name paper --format md,html --out out/
    python -m sweep.report --compare vit-sweep resnet-sweep        # two sweeps side by side

Writes results.parquet / results.csv (one row per trial), report.md and a self-contained report.html (tables,
figures embedded), the PNG figures, and logs them all as artifacts of the sweep's parent MLflow run. Works on a
sweep that is still running or was interrupted: the report says which cells are incomplete.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweep.plan.spec import SpecError
from sweep.references import available as available_references
from sweep.references import load_reference
from sweep.report import analysis, outcome, plots, reproduction
from sweep.report.console_table import count
from sweep.report.document import Document
from sweep.results import comparisons, predictions, trust
from sweep.results.cell_outcome import cell_outcomes
from sweep.results.scores import method_scores
from sweep.results.table import cell_status, trials_table
from sweep.store import mlflow_experiment
from sweep.store.storage import Storage, parse_storage
from trainables.contract import SCORE_TOLERANCE

FORMATS = ("md", "html", "csv", "parquet")
RAW_COLUMNS_DOC = (
    "one row per trial: sweep, trial_key, cell_key, run_id, task, dataset, backbone, method, fraction, seed, status, "
    "stopped_early, failure_reason, score (the validation selection metric, higher is better), val_metric, "
    "val_best, val_best_loss, test_metric, test_main, test_f1, test_acc, test_balanced_acc, test_auroc, test_mcc, "
    "test_loss (and "
    "test_<m> for every other test metric, e.g. test_fid, test_kid), "
    "bn_mode, counts_val and counts_test (images per class: the trivial classifier's scores come from them), "
    "not_converged (the chosen trial's validation score still rising at its end), lr_at_edge and knobs_at_edge "
    "(its learning rate, its other searched knobs, at an edge of what its cell tried), trainable_params, total_params, trainable_share, epochs_run, max_epochs, "
    "wall_seconds, peak_mem_mb, cpus, gpus, workers, is_best_in_cell, and every hyperparameter as "
    "searched.* / train.* / method.*"
)


@dataclass
class Report:
    files: list[Path]
    trials: pd.DataFrame
    scores: pd.DataFrame
    status: pd.DataFrame
    comparisons: pd.DataFrame  # every comparison stated (sweep.results.comparisons.compare_cells)


def build(uri: str, sweep: str, out: Path, formats: tuple[str, ...] = FORMATS, log_to_mlflow: bool = True,
          reference: str | None = None, rope: float = comparisons.DEFAULT_ROPE,
          adaptive: tuple[int, int] | None = None, tolerance: float = SCORE_TOLERANCE) -> Report:
    """`adaptive`: (initial, max) of the spec's adaptive seeds, so the report says why a comparison took the seeds
    it took. `tolerance`: the spec's search.flat_tolerance (a not-converged trial is judged as its rounds judged
    it)."""
    trials, cells = trials_table(uri, sweep, tolerance)
    status = cell_status(trials, cells)
    chosen = cell_outcomes(trials)
    scores = method_scores(trials, chosen)
    found = predictions.load(uri, chosen["run_id"].tolist(), out / predictions.CACHE) if len(chosen) else {}
    compared = comparisons.compare_cells(chosen, scores, found, rope)
    if adaptive:
        compared["seeds_why"] = [seeds_why(n, v, *adaptive) for n, v in zip(compared["seeds"], compared["verdict"],
                                                                             strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "parquet" in formats:
        trials.to_parquet(out / "results.parquet", index=False)
        predictions.compact(found).to_parquet(out / predictions.COMPACT, index=False)
        files += [out / "results.parquet", out / predictions.COMPACT]
    if "csv" in formats:
        trials.to_csv(out / "results.csv", index=False)
        files.append(out / "results.csv")

    paired = compared[compared["reference"] == "full"]
    doc = Document(f"Sweep {sweep!r}: which PEFT method, where")
    _overview(doc, trials, status)
    _did_not_learn(doc, scores)
    for (task, backbone), group in scores.groupby(["task", "backbone"], sort=True):
        _main_table(doc, task, backbone, group)
    _comparisons(doc, compared, rope, len(found), len(chosen))
    _across_datasets(doc, scores, out, files)
    _data_volume(doc, scores, out, files)
    _pareto(doc, scores, out, files)
    _lr_search(doc, trials, cells, out, files)
    _cost(doc, trials)
    doc.heading("Recommendations")
    doc.bullets(analysis.recommendations(scores, paired) or ["No cell has a finished trial yet."])
    if reference:
        _reproduction(doc, reproduction.compare(load_reference(reference), scores), load_reference(reference), out,
                      files)
    doc.heading("Raw data")
    doc.text(f"`results.parquet` / `results.csv`: {RAW_COLUMNS_DOC}. Every number above can be recomputed from it, "
             f"and every comparison interval from it and `{predictions.COMPACT}` (the chosen trials' test predictions: "
             "run_id, row, group, label, predicted class, classes; sweep.report.predictions.from_compact reads it).")
    if "md" in formats:
        (out / "report.md").write_text(doc.markdown())
        files.append(out / "report.md")
    if "html" in formats:
        (out / "report.html").write_text(doc.html())
        files.append(out / "report.html")
    if log_to_mlflow:
        _log(uri, sweep, trials, status, chosen, files)
    return Report(files, trials, scores, status, compared)


def _overview(doc: Document, trials: pd.DataFrame, status: pd.DataFrame) -> None:
    states = trials["status"].value_counts().to_dict() if len(trials) else {}
    selections = sorted({f"{v} (test: {t})" for v, t in zip(trials["val_metric"], trials["test_metric"],
                                                              strict=True)}) if len(trials) else []
    doc.text(
        f"{len(status)} cells, {int(status['complete'].sum()) if len(status) else 0} complete; {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}). Each cell's trial is chosen on its "
        f"validation metric alone ({'; '.join(selections)}); the tables show those trials' test metric as "
        "mean ± std over seeds with a 95% bootstrap confidence interval (F1, accuracies and AUROC in percent)."
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


def _did_not_learn(doc: Document, scores: pd.DataFrame) -> None:
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


def _main_table(doc: Document, task: str, backbone: str, scores: pd.DataFrame) -> None:
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
              "rising over its last epochs (train longer; the rule by which the search rounds double the epochs, "
              "trainables/contract.py still_improving); ‡: the chosen learning rate is the edge of the range searched "
              "(widen it).")
    if task == "classification":
        legend += (" BatchNorm stats: whether the BatchNorm running statistics were updated in training (train) or "
                   "kept as pretrained (eval).")
    doc.text(legend)
    doc.table(pd.DataFrame(rows))


def _comparisons(doc: Document, compared: pd.DataFrame, rope: float, with_predictions: int, chosen: int) -> None:
    if compared.empty:
        return
    doc.heading("Comparisons: PEFT against full fine-tuning, and the best method against the runner-up")
    on_images = compared["basis"] == comparisons.BASIS_IMAGES
    text = ("Each comparison is on the same backbone, dataset and fraction (Δ positive: the method is better than "
            "the reference). ")
    if on_images.any():
        text += ("Where the trials left per-image predictions, the interval is a paired bootstrap over the test "
                 f"images ({comparisons.RESAMPLES} resamples; patient or lesion groups drawn whole), pooled over "
                 "seeds: each resample scores both methods' every seed on the same images, and the difference of "
                 "their seed means is taken. P(better) is the share of resamples where the method is ahead. "
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
    doc.table(pd.DataFrame({
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
    }))


def seeds_why(seeds: int, verdict: str, initial: int, most: int) -> str:
    """Why a comparison has the seeds it has, under adaptive seeds."""
    if seeds > initial:
        return (f"{seeds - initial} added while undecided; still undecided at the most allowed" if verdict ==
                "undecided" and seeds >= most else f"{seeds - initial} added while undecided, then {verdict}")
    if verdict == "undecided":
        return "undecided, no seed added yet (sweep not finished?)" if seeds < most else "the most allowed"
    return f"the initial {initial}: decided ({verdict})"


def _across_datasets(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
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
        name = _slug(f"cd-{r.backbone}-{r.fraction:g}") + ".png"
        plots.critical_difference(r.ranks, r.holm, out / name,
                                  f"{r.backbone}, fraction {r.fraction:g}: mean rank over {n} datasets")
        files.append(out / name)
    doc.bullets(lines)
    doc.text("Critical-difference diagrams: each method at its mean rank over the datasets (1 = best); methods "
             "joined by a bar are not told apart by pairwise Wilcoxon signed-rank tests with Holm's correction "
             "(p > 0.05; Benavoli et al., JMLR 2016, prefer these to the Nemenyi test). Only cells that learned "
             "count, and only methods run on every dataset.")
    for r in rankings:
        name = _slug(f"cd-{r.backbone}-{r.fraction:g}") + ".png"
        doc.image(out / name, f"Critical-difference diagram: {r.backbone} ({r.task}), fraction {r.fraction:g}")


def _data_volume(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
    if scores["fraction"].nunique() < 2:
        return
    doc.heading("Data-volume study")
    for (_task, backbone, dataset), group in scores.groupby(["task", "backbone", "dataset"], sort=True):
        name = _slug(f"volume-{backbone}-{dataset}") + ".png"
        plots.data_volume(group, out / name, f"{dataset}, {backbone}")
        files.append(out / name)
        doc.image(out / name, f"{group['metric'].iloc[0]} against training fraction: {dataset}, {backbone}")


def _pareto(doc: Document, scores: pd.DataFrame, out: Path, files: list[Path]) -> None:
    doc.heading("Test metric against trainable parameters")
    for (_task, backbone, dataset), group in scores.groupby(["task", "backbone", "dataset"], sort=True):
        part = group[group["fraction"] == group["fraction"].max()]
        name = _slug(f"pareto-{backbone}-{dataset}") + ".png"
        plots.pareto(part, out / name, f"{dataset}, {backbone} (fraction {part['fraction'].iloc[0]:g})")
        files.append(out / name)
        doc.image(out / name, f"{part['metric'].iloc[0]} against trainable parameters, Pareto front in red: "
                              f"{dataset}")


def _lr_search(doc: Document, trials: pd.DataFrame, cells: pd.DataFrame, out: Path, files: list[Path]) -> None:
    """Per dataset and backbone, the learning-rate axis plot; then the cells whose search still ended at an edge
    of its range, and which kind of edge (sweep/tune/rounds.py; written on the cell runs by the launcher)."""
    if "searched.lr" not in trials or trials["searched.lr"].isna().all():
        return
    doc.heading("Learning-rate search")
    for (_task, backbone, dataset), group in trials[trials["searched.lr"].notna()].groupby(
            ["task", "backbone", "dataset"], sort=True):
        name = _slug(f"lr-{backbone}-{dataset}") + ".png"
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
    at_lr_edge = cells["search_edge"].isin(["stability", "high", "low"])
    edge = cells[at_lr_edge | cells["cell_key"].isin(knobs)]
    if len(edge):
        doc.text(f"{int(at_lr_edge.sum())} of {len(cells)} cells ended their search at an edge of the learning rates "
                 "tried (stability: larger ones diverged; high/low: the limits or search.max_extensions stopped it)"
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


def _cost(doc: Document, trials: pd.DataFrame) -> None:
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


def _reproduction(doc: Document, found: reproduction.Reproduction, reference, out: Path, files: list[Path]) -> None:
    cells = found.cells
    main = cells[cells["table"] != "Figure 1"]
    ran = main[main["ours"].notna()]
    doc.heading(f"Reproduction of {reference.short} (--reference {reference.name})")
    doc.text(f"{reference.citation} Each cell: ours / published (difference, ours minus published); F1 in percent "
             f"(the study prints it as a fraction), FID as printed. {len(ran)} of {len(main)} cells of the study's "
             "tables were run in this sweep. Cells marked (did not learn) are left out of the ranks and findings.")
    for (table, backbone), part in main.groupby(["table", "study_backbone"], sort=False):
        if part["ours"].isna().all():
            continue
        columns = list(dict.fromkeys(part["study_dataset"] + part["fraction"].map(
            lambda f: "" if f == 1.0 else f" ({f:g})")))
        rows = []
        for method, mine in part.groupby("study_method", sort=False):
            row = {"method": method}
            for r in mine.itertuples(index=False):
                column = r.study_dataset + ("" if r.fraction == 1.0 else f" ({r.fraction:g})")
                row[column] = (f"- / {r.published:.1f}" if math.isnan(r.ours) else
                               f"{r.ours:.1f} / {r.published:.1f} ({r.difference:+.1f})"
                               + (" (did not learn)" if r.learned is False else ""))
            rows.append(row)
        doc.heading(f"{table}, {backbone}", level=3)
        doc.table(pd.DataFrame(rows, columns=["method", *columns]).fillna("-"))
    missing = main[main["ours"].isna()]
    if len(missing):
        doc.heading("Not run here", level=3)
        doc.bullets([f"{table}, {backbone}: {len(part)} cells ({', '.join(dict.fromkeys(part['study_method']))} "
                     f"on {', '.join(dict.fromkeys(part['study_dataset']))})"
                     for (table, backbone), part in missing.groupby(["table", "study_backbone"], sort=False)])
    doc.heading("Method ranks (mean of the per-dataset ranks, 1 = best, as the study ranks them)", level=3)
    ranks = found.ranks[found.ranks["our_datasets"] > 0]
    if len(ranks):
        doc.table(pd.DataFrame({"backbone": ranks["study_backbone"], "method": ranks["study_method"],
                                "study": ranks["study_mean_rank"].map(lambda v: f"{v:.2f}"),
                                "ours": ranks["our_mean_rank"].map(lambda v: f"{v:.2f}"),
                                "datasets (ours)": ranks["our_datasets"]}))
        doc.text("Kendall's tau between the study's order of the methods and ours, per dataset (1: the same order, "
                 "-1: reversed; over the methods we ran that learned):")
        doc.table(pd.DataFrame({"backbone": found.taus["study_backbone"], "dataset": found.taus["study_dataset"],
                                "methods": found.taus["methods"],
                                "tau": found.taus["tau"].map(lambda v: "-" if math.isnan(v) else f"{v:+.2f}")}))
    else:
        doc.text("No method of the study was run here on any of its datasets.")
    doc.heading("The study's findings, on our numbers", level=3)
    doc.table(pd.DataFrame({"finding": found.findings["finding"], "study": found.findings["study"],
                            "ours": found.findings["ours"], "verdict": found.findings["verdict"]}))
    if len(found.volume):
        name = "reference-volume.png"
        plots.study_volume(found.volume, out / name, "HAM10000")
        files.append(out / name)
        doc.image(out / name, "The study's Figure 1 (dashed) and ours (solid, where run): test F1 against the "
                              "fraction of HAM10000's training split")


def _log(uri: str, sweep: str, trials: pd.DataFrame, status: pd.DataFrame, outcomes: pd.DataFrame,
         files: list[Path]) -> None:
    mlflow = mlflow_experiment.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    parent = mlflow_experiment.runs_by_tag(mlflow, experiment.experiment_id, role="sweep", key="sweep").get(sweep)
    outcome.record_outcome(uri, trials, status, outcomes=outcomes)
    if parent:
        for path in files:
            mlflow.log_artifact(parent, str(path), artifact_path="report")


def compare(uri_a: str, a: str, uri_b: str, b: str, out: Path, rope: float = comparisons.DEFAULT_ROPE) -> Path:
    """Two sweeps side by side, matched on task, dataset, method and fraction (backbones may differ). Where both
    sides' chosen trials left predictions on the same test images, b against a is a paired bootstrap over them
    (sweep.results.comparisons), else a per-seed comparison."""
    scores, chosen, found = [], [], {}
    for uri, name in ((uri_a, a), (uri_b, b)):
        trials, _ = trials_table(uri, name)
        chosen.append(cell_outcomes(trials))
        scores.append(method_scores(trials, chosen[-1]))
        if len(chosen[-1]):
            found |= predictions.load(uri, chosen[-1]["run_id"].tolist(), out / predictions.CACHE)
    keys = ["task", "dataset", "method", "fraction"]
    merged = scores[0].merge(scores[1], on=keys, how="outer", suffixes=("_a", "_b")).sort_values(keys)
    paired = []
    for row in merged.itertuples(index=False):
        mine, reference = ((c[(c["task"] == row.task) & (c["dataset"] == row.dataset) & (c["method"] == row.method)
                              & (c["fraction"] == row.fraction)]) for c in (chosen[1], chosen[0]))
        paired.append(comparisons.compare_pair(mine, reference, found, rope) if len(mine) and len(reference)
                      else {"ci_low": math.nan, "ci_high": math.nan, "verdict": "-", "basis": "-"})
    table = pd.DataFrame({
        "dataset": merged["dataset"], "fraction": merged["fraction"].map(lambda f: f"{f:g}"),
        "method": merged["method"],
        a: merged["mean_a"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
        b: merged["mean_b"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
        "Δ (b − a, better is +)": (merged["oriented_b"] - merged["oriented_a"]).map(
            lambda v: "-" if pd.isna(v) else f"{v:+.1f}"),
        "95% CI": ["-" if pd.isna(p["ci_low"]) else f"[{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]" for p in paired],
        "verdict": [p["verdict"] for p in paired],
        "on": [p["basis"] for p in paired],
    })
    doc = Document(f"Sweeps {a!r} and {b!r} compared")
    doc.text(f"Test metric of each cell's validation-chosen trial, mean over seeds (accuracies in percent). Backbones: "
             f"{a}: {', '.join(sorted(scores[0]['backbone'].unique()))}; "
             f"{b}: {', '.join(sorted(scores[1]['backbone'].unique()))}. The interval and verdict of b against a: a "
             "paired bootstrap over the test images pooled over seeds where both left per-image predictions on the "
             f"same images, else over the seeds alone ('on' says which); equivalent within ±{rope:g} points.")
    doc.table(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{_slug(a)}-{_slug(b)}.md").write_text(doc.markdown())
    path = out / f"compare-{_slug(a)}-{_slug(b)}.html"
    path.write_text(doc.html())
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _tracking_uri(storage: Storage, name: str, given: str | None) -> str:
    if given:
        return mlflow_experiment.without_credentials(given)
    saved = storage.join(name, "medpeft-sweep.json")
    if storage.exists(saved):
        return json.loads(storage.read_text(saved))["mlflow_uri"]
    return mlflow_experiment.default_tracking_uri(storage)


def _saved_spec(storage: Storage, name: str) -> dict:
    """The spec the sweep was started with (its report.rope, its seeds), or {} for a sweep without one."""
    saved = storage.join(name, "medpeft-sweep.json")
    return json.loads(storage.read_text(saved)).get("spec", {}) if storage.exists(saved) else {}


def _out(storage: Storage, given: str | None, *parts: str) -> Path:
    if given:
        return Path(given)
    return Path(storage.join(*parts)) if not storage.remote else Path.cwd() / "-".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="the sweep (as given to sweep.launch)")
    parser.add_argument("--compare", nargs=2, metavar=("NAME_A", "NAME_B"))
    parser.add_argument("--storage", default="results")
    parser.add_argument("--mlflow-uri", default=None)
    parser.add_argument("--out", default=None, help="default: <storage>/<name>/report")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--rope", type=float, default=None,
                        help="region of practical equivalence in points (default: the spec's report.rope, "
                             f"{comparisons.DEFAULT_ROPE:g})")
    parser.add_argument("--reference", default=None,
                        help="put a published study's numbers beside ours, e.g. dutt2024 (shipped: "
                             f"{', '.join(available_references())})")
    args = parser.parse_args(argv)
    try:
        storage = parse_storage(args.storage)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if unknown := set(formats) - set(FORMATS):
        print(f"error: unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    try:
        if args.compare:
            a, b = args.compare
            out = _out(storage, args.out, "compare")
            path = compare(_tracking_uri(storage, a, args.mlflow_uri), a, _tracking_uri(storage, b, args.mlflow_uri),
                           b, out, comparisons.DEFAULT_ROPE if args.rope is None else args.rope)
            print(f"comparison written to {path}")
            return 0
        if not args.name:
            print("error: give --name NAME (or --compare NAME_A NAME_B)", file=sys.stderr)
            return 2
        out = _out(storage, args.out, args.name, "report")
        if args.reference and args.reference not in available_references():
            print(f"error: no reference study {args.reference!r}; shipped: {', '.join(available_references())}",
                  file=sys.stderr)
            return 2
        if args.rope is not None and not (args.rope >= 0):
            print(f"error: --rope {args.rope:g} is negative; give a half-width in points, e.g. --rope 1",
                  file=sys.stderr)
            return 2
        saved = _saved_spec(storage, args.name)
        rope = args.rope if args.rope is not None else saved.get("report", {}).get("rope", comparisons.DEFAULT_ROPE)
        seeds = saved.get("seeds")
        adaptive = (int(seeds["initial"]), int(seeds["max"])) if isinstance(seeds, dict) else None
        tolerance = float(saved.get("search", {}).get("flat_tolerance", SCORE_TOLERANCE))
        report = build(_tracking_uri(storage, args.name, args.mlflow_uri), args.name, out, formats,
                       reference=args.reference, rope=float(rope), adaptive=adaptive, tolerance=tolerance)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    incomplete = int((~report.status["complete"]).sum()) if len(report.status) else 0
    print(f"{len(report.trials)} trials, {len(report.status)} cells ({incomplete} incomplete)")
    for path in report.files:
        print(f"  {path}")
    print(f"Best per cell: {int(report.trials['is_best_in_cell'].sum())} trials tagged is_best_in_cell=true in MLflow; "
          f"{count(len(report.files))} files logged to the sweep's parent run (artifacts/report).")
    return 0

