"""A sweep's runs in MLflow become the study's tables and plots: `build` writes results.parquet / results.csv, the
compact predictions, report.md / report.html and the PNG figures, and logs them to the sweep's parent MLflow run.
How to run it: sweep/report/cli.py (`python -m sweep.report`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweep.references import load_reference
from sweep.report import analysis, outcome, reproduction, sections
from sweep.report.document import Document
from sweep.results import comparisons, predictions
from sweep.results.cell_outcome import cell_outcomes
from sweep.results.scores import method_scores
from sweep.results.table import cell_status, trials_table
from sweep.store import mlflow_experiment
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
    comparisons: pd.DataFrame  # every comparison stated (sweep.results.comparisons.from_results)


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
    # From the trials table and the predictions alone, as the committed study's test recomputes it
    # (tests/test_committed_study.py): one path from the files to the table.
    compared = comparisons.from_results(trials, found, rope)
    scores = comparisons.with_score_intervals(scores, chosen, found)
    if adaptive:
        compared["seeds_why"] = [sections.seeds_why(n, v, *adaptive) for n, v in zip(compared["seeds"], compared["verdict"],
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
    sections.overview(doc, trials, status)
    sections.did_not_learn(doc, scores)
    for (task, backbone), group in scores.groupby(["task", "backbone"], sort=True):
        sections.main_table(doc, task, backbone, group)
    sections.comparisons_section(doc, compared, rope, len(found), len(chosen))
    sections.across_datasets(doc, scores, out, files)
    sections.data_volume(doc, scores, out, files)
    sections.pareto(doc, scores, out, files)
    sections.lr_search(doc, trials, cells, out, files)
    sections.cost(doc, trials)
    doc.heading("Recommendations")
    doc.bullets(analysis.recommendations(scores, paired) or ["No cell has a finished trial yet."])
    if reference:
        reproduction.section(doc, reproduction.compare(load_reference(reference), scores), load_reference(reference), out,
                      files)
    doc.heading("Raw data")
    doc.text(f"`results.parquet` / `results.csv`: {RAW_COLUMNS_DOC}. Every number above can be recomputed from it, "
             f"and every comparison interval from it and `{predictions.COMPACT}` (the chosen trials' test predictions: "
             "run_id, row, group, label, predicted class, classes; sweep.results.predictions.from_compact reads it).")
    if "md" in formats:
        (out / "report.md").write_text(doc.markdown())
        files.append(out / "report.md")
    if "html" in formats:
        (out / "report.html").write_text(doc.html())
        files.append(out / "report.html")
    if log_to_mlflow:
        _log(uri, sweep, trials, status, chosen, files)
    return Report(files, trials, scores, status, compared)


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
    """Two sweeps side by side, matched on task, dataset, method and fraction, and on the backbone unless each
    sweep has one (then the backbones may differ: that is the comparison). Where both sides' chosen trials left
    predictions on the same test images, b against a is a paired bootstrap over them (sweep.results.comparisons),
    else a per-seed comparison."""
    scores, chosen, found = [], [], {}
    for uri, name in ((uri_a, a), (uri_b, b)):
        trials, _ = trials_table(uri, name)
        chosen.append(cell_outcomes(trials))
        scores.append(method_scores(trials, chosen[-1]))
        if len(chosen[-1]):
            found |= predictions.load(uri, chosen[-1]["run_id"].tolist(), out / predictions.CACHE)
    # Sweeps with several backbones each: a cell of one is paired with the same backbone's of the other (matching
    # on the rest alone would pool two backbones' seeds into one side of a comparison).
    by_backbone = any(s["backbone"].nunique() > 1 for s in scores)
    keys = ["task", *(["backbone"] if by_backbone else []), "dataset", "method", "fraction"]
    merged = scores[0].merge(scores[1], on=keys, how="outer", suffixes=("_a", "_b")).sort_values(keys)
    paired = []
    for row in merged.itertuples(index=False):
        mine, reference = (c[(c[keys] == pd.Series({k: getattr(row, k) for k in keys})).all(axis=1)]
                           for c in (chosen[1], chosen[0]))
        paired.append(comparisons.compare_pair(mine, reference, found, rope) if len(mine) and len(reference)
                      else {"ci_low": math.nan, "ci_high": math.nan, "verdict": "-", "basis": "-"})
    table = pd.DataFrame({
        **({"backbone": merged["backbone"]} if by_backbone else {}),
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
             f"{b}: {', '.join(sorted(scores[1]['backbone'].unique()))}"
             f"{' (each backbone against the same one)' if by_backbone else ''}. The interval and verdict of b against a: a "
             "paired bootstrap over the test images and the seeds where both left per-image predictions on the "
             f"same images, else over the seeds alone ('on' says which); equivalent within ±{rope:g} points.")
    doc.table(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{sections.slug(a)}-{sections.slug(b)}.md").write_text(doc.markdown())
    path = out / f"compare-{sections.slug(a)}-{sections.slug(b)}.html"
    path.write_text(doc.html())
    return path
