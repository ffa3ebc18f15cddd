"""Every committed study (a folder of docs/results/ with report.md, results.parquet and predictions.parquet; found,
not listed, so a regenerated or renamed study is checked without editing this file) can be checked from its files
alone, with no MLflow. The function the report builds its comparisons with (sweep.results.comparisons
.from_results) names, from results.parquet and predictions.parquet, every comparison report.md lists, in its
order, and recomputes a few of them (spread over the table, and every 'better' and 'worse': each a bootstrap, so
not all) with the same bootstrap seed to what report.md prints, column by column; the chosen trials' predictions
give back the test scores the trials logged; and one comparison's difference, seeds and the least width its
interval can have are worked out by hand with scikit-learn from the predicted classes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

from sweep.report.sections import comparison_table
from sweep.results import comparisons, predictions

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
NEEDED = ("report.md", "results.parquet", predictions.COMPACT)
STUDIES = sorted(d for d in RESULTS.glob("*/") if all((d / f).is_file() for f in NEEDED))
SECTION = "## Comparisons"  # the heading sweep/report/sections.py comparisons_section writes
ROPE = re.compile(r"within ±([0-9.eE+-]+) points \(report\.rope\)")  # the section's statement of its rope
KEY = ["backbone", "dataset", "fraction", "method", "against"]  # a row of the printed table
SPREAD = 5  # rows recomputed at even steps over the table, beside every 'better' and 'worse' one
# The confusion-matrix metrics by scikit-learn's own functions, in the report's units (percent but for MCC).
SKLEARN = {"f1": (lambda y, p: f1_score(y, p, average="macro"), 100.0), "acc": (accuracy_score, 100.0),
           "balanced_acc": (balanced_accuracy_score, 100.0), "mcc": (matthews_corrcoef, 1.0)}


@dataclass
class Study:
    trials: pd.DataFrame  # results.parquet
    compact: pd.DataFrame  # predictions.parquet as committed
    found: dict[str, pd.DataFrame]  # {run id: predictions}, as the report reads them
    table: pd.DataFrame  # report.md's comparison table, as text
    rope: float | None  # as report.md states it


def printed_comparisons(report: str) -> tuple[pd.DataFrame, float | None]:
    """report.md's comparison table (the first table of its Comparisons section; empty where it has none), as
    text, and the rope the section says its verdicts used."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(SECTION)), None)
    if start is None:
        return pd.DataFrame(columns=KEY), None
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    columns = [c.strip() for c in lines[header].strip().strip("|").split("|")]
    rows = []
    for line in lines[header + 2:]:  # past the |---| rule
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    rope = ROPE.search("\n".join(lines[start:header]))
    return pd.DataFrame(rows, columns=columns), float(rope.group(1)) if rope else None


def identity(backbone: str, dataset: str, fraction: float | str, method: str, against: str) -> tuple:
    """A comparison as the printed table tells it from the others (the fraction as printed: %g)."""
    return backbone, dataset, f"{float(fraction):g}", method, against


@pytest.fixture(scope="module", params=STUDIES, ids=lambda d: d.name)
def study(request) -> Study:
    folder = request.param
    compact = pd.read_parquet(folder / predictions.COMPACT)
    table, rope = printed_comparisons((folder / "report.md").read_text())
    return Study(pd.read_parquet(folder / "results.parquet"), compact, predictions.from_compact(compact), table,
                 rope)


def rope_of(study: Study) -> float:
    """The rope the report's verdicts used: the section states it wherever a comparison is on the test images
    (a comparison over the seeds alone does not use it)."""
    on_images = (study.table.get("test images", pd.Series(dtype=str)) != "-").any()
    assert study.rope is not None or not on_images, "report.md compares on the test images but states no rope"
    return comparisons.DEFAULT_ROPE if study.rope is None else study.rope


def chosen_rows(table: pd.DataFrame) -> list[int]:
    """Which printed rows to recompute (each is a 2,000-resample bootstrap): SPREAD at even steps from the first to
    the last, every 'better' and 'worse' (the claims), and the first of every other kind of verdict and of
    interval."""
    picked = set(np.linspace(0, len(table) - 1, min(SPREAD, len(table))).round().astype(int).tolist())
    picked |= set(np.flatnonzero(table["verdict"].isin(["better", "worse"])).tolist())
    for column in (table["verdict"].str.split(":").str[0], table["interval over"]):
        picked |= {int(np.flatnonzero(column == value)[0]) for value in column.unique()}
    return sorted(picked)


def test_studies_are_found():
    """The folder this test reads: at least the study the README's findings come from."""
    assert STUDIES, f"no folder of {RESULTS} has {', '.join(NEEDED)}"


@dataclass
class Recomputed:
    planned: list[tuple]  # every comparison the files give, in order
    rows: list[int]  # the rows of report.md's table recomputed (chosen_rows)
    table: pd.DataFrame  # those rows recomputed from the files, as report.md prints them


@pytest.fixture(scope="module")
def recomputed(study) -> Recomputed:
    """One pass of the report's function over the files: it names every comparison it would state, and
    bootstraps only the chosen rows."""
    rows = chosen_rows(study.table) if len(study.table) else []
    wanted = {identity(*study.table.loc[i, KEY]) for i in rows}
    planned = []

    def keep(row) -> bool:
        planned.append(identity(row["backbone"], row["dataset"], row["fraction"], row["method"], row["reference"]))
        return planned[-1] in wanted

    compared = comparisons.from_results(study.trials, study.found, rope_of(study), keep=keep)
    return Recomputed(planned, rows, comparison_table(compared).reset_index(drop=True))


def test_the_report_states_every_comparison_the_files_give(study, recomputed):
    assert [identity(*row) for row in study.table[KEY].itertuples(index=False)] == recomputed.planned


def test_every_chosen_trial_left_the_predictions_of_its_logged_score(study):
    """The comparisons need the predictions of every chosen trial (is_best_in_cell), and they are that trial's:
    scikit-learn's metric of its predicted classes is the test score it logged."""
    chosen = study.trials[study.trials["is_best_in_cell"].astype(bool)]
    metric = chosen["test_metric"].str.rsplit("/", n=1).str[-1]
    chosen = chosen[metric.isin(list(SKLEARN))]
    assert len(chosen), "no chosen trial with a metric recomputable from predicted classes"
    missing = sorted(set(chosen["run_id"]) - set(study.found))
    assert not missing, f"{len(missing)} of {len(chosen)} chosen trials have no predictions, e.g. {missing[:3]}"
    by_run = dict(tuple(study.compact.groupby("run_id", observed=True)))
    for run_id, name, logged in zip(chosen["run_id"], chosen["test_metric"], chosen["test_main"], strict=True):
        score, _ = SKLEARN[name.rsplit("/", 1)[-1]]
        part = by_run[run_id]
        recomputed = score(part["label"].to_numpy(), part["predicted"].to_numpy())
        assert recomputed == pytest.approx(logged, abs=1e-9), (run_id, name)


def test_the_committed_comparisons_are_recomputed_from_the_committed_files(study, recomputed):
    """Every printed column of the chosen rows, to the printed precision: Δ, interval, P(better), seeds, tests and
    verdict."""
    if study.table.empty:
        pytest.skip("this study's report has no comparisons")
    printed = recomputed.table
    assert len(printed) == len(recomputed.rows)
    assert set(printed.columns) <= set(study.table.columns)
    for mine, index in zip(printed.itertuples(index=False), recomputed.rows, strict=True):
        mine = {k: str(v) for k, v in zip(printed.columns, mine, strict=True)}
        assert mine == study.table.loc[index, list(printed.columns)].to_dict(), f"report.md's row {index + 1}"


def test_one_difference_by_hand_with_scikit_learn(study):
    """One comparison, from the predicted classes with scikit-learn alone (no code of the report's): each method's
    metric per seed on the whole test set, averaged over its seeds and differenced, is the printed Δ; the seeds
    both have are the printed seeds and the seeds ahead; and the interval is at least as wide as what the seeds'
    spread alone gives at a t quantile (spread/n on n-1 degrees of freedom: the comparisons module's account of
    the seeds), centred on Δ. A 'better' or 'worse' row where there is one: those are the claims."""
    table = study.table
    on_images = table[table.get("test images", pd.Series(dtype=str)) != "-"] if len(table) else table
    if on_images.empty:
        pytest.skip("no comparison of this study is on the test images")
    claims = on_images[on_images["verdict"].isin(["better", "worse"])]
    row = (claims if len(claims) else on_images).iloc[0]
    chosen = study.trials[study.trials["is_best_in_cell"].astype(bool)]
    chosen = chosen[(chosen["backbone"] == row["backbone"]) & (chosen["dataset"] == row["dataset"])
                    & (chosen["fraction"].map(lambda f: f"{f:g}") == row["fraction"])]
    by_run = dict(tuple(study.compact.groupby("run_id", observed=True)))
    per_seed = []
    for method in (row["method"], row["against"]):
        cell = chosen[chosen["method"] == method]
        score, scale = SKLEARN[cell["test_metric"].iloc[0].rsplit("/", 1)[-1]]
        sign = 1.0 if bool(cell["test_higher_is_better"].iloc[0]) else -1.0
        per_seed.append({int(seed): sign * scale * score(by_run[r]["label"].to_numpy(),
                                                            by_run[r]["predicted"].to_numpy())
                         for seed, r in zip(cell["seed"], cell["run_id"], strict=True)})
    mine, reference = per_seed
    difference = np.mean(list(mine.values())) - np.mean(list(reference.values()))
    assert abs(difference - float(row["Δ"])) <= 0.05 + 1e-9, (dict(row), difference)
    common = sorted(set(mine) & set(reference))
    assert row["seeds"] == str(len(common)), dict(row)
    ahead = sum(mine[s] > reference[s] for s in common)
    assert row["seeds ahead"] == f"{ahead} of {len(common)}", dict(row)
    # What the seeds' spread holds of the mean's variance: the paired differences' when both have the same seeds,
    # else each method's own.
    spreads = ([[mine[s] - reference[s] for s in common]] if set(mine) == set(reference)
               else [list(mine.values()), list(reference.values())])
    least = math.sqrt(sum(stats.t.ppf(0.975, len(v) - 1) ** 2 * np.var(v, ddof=1) / len(v)
                          for v in spreads if len(v) > 1))
    low, high = (float(v) for v in row["95% CI"].strip("[]").split(","))
    assert (high - low) / 2 >= least - 0.05 - 1e-9, (dict(row), least)
    if least > 0:  # the interval is then Δ ± its half-width
        assert abs((low + high) / 2 - difference) <= 0.1 + 1e-9, (dict(row), difference)


SPECS = Path(__file__).resolve().parent.parent / "search_spaces"
COSTED = sorted(d for d in RESULTS.glob("*/") if (d / "cost.json").is_file())


@pytest.mark.parametrize("study", COSTED, ids=lambda d: d.name)
def test_a_committed_study_ran_within_its_specs_cap(study):
    """A study whose spec caps its trial-epochs (search.max_trial_epochs): the most every round it ran could take,
    each at its scheduler's most (what the searcher reserves before it takes a round or an added seed), stays
    within the cap, and so the cap never refused anything it ran, and its cost record's trial-epochs are within
    it too. The spec is the search_spaces/*.yaml with the study's sweep name."""
    import json

    from sweep.plan.spec import SpecError, load_specs

    def sweeps(path: Path) -> list:
        try:
            return load_specs(path)
        except SpecError:  # not a sweep spec (methods.yaml: the per-method search spaces)
            return []

    record = json.loads((study / "cost.json").read_text())
    specs = [s for p in sorted(SPECS.glob("*.yaml")) for s in sweeps(p) if s.name == record["sweep"]]
    cap = specs[0].search.max_trial_epochs if specs else None
    if cap is None:
        pytest.skip(f"{record['sweep']}: no spec in search_spaces/ caps its trial-epochs")
    scheduler = specs[0].scheduler
    reserved = sum(scheduler.most_trial_epochs(r["trials"], r["max_epochs"]) for r in record["rounds"])
    assert record["actual"]["trial_epochs"] <= reserved <= cap
