"""The committed study (docs/results/cnn-study/) can be checked from its files alone: its comparison table is
recomputed from results.parquet and predictions.parquet (the same bootstrap seed gives the same numbers), and the
observed differences from scikit-learn's macro F1 on the predicted classes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from sweep.results import comparisons, predictions
from sweep.results.table import chosen_trials

STUDY = Path(__file__).resolve().parent.parent / "docs" / "results" / "cnn-study"
COLUMNS = ["backbone", "dataset", "fraction", "method", "against", "seeds", "test images", "Δ", "95% CI", "P(better)"]

pytestmark = pytest.mark.skipif(not (STUDY / predictions.COMPACT).exists(), reason="no committed study here")


def report_comparisons() -> pd.DataFrame:
    """The comparison table of report.md, as text."""
    lines = (STUDY / "report.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| backbone | dataset | fraction | method "
                                                                       "| against |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return pd.DataFrame(rows, columns=header)


@pytest.fixture(scope="module")
def study():
    trials = pd.read_parquet(STUDY / "results.parquet")
    found = predictions.from_compact(pd.read_parquet(STUDY / predictions.COMPACT))
    return chosen_trials(trials), found, report_comparisons()


def test_every_chosen_trial_left_its_predictions(study):
    chosen, found, _ = study
    assert set(chosen["run_id"]) <= set(found)


def test_the_committed_comparisons_are_recomputed_from_the_committed_files(study):
    chosen, found, table = study
    rope = comparisons.DEFAULT_ROPE  # cnn_study.yaml leaves report.rope at its default
    # Every 5th row: 2000 resamples each, a few seconds in all.
    for row in table.iloc[::5].itertuples(index=False):
        row = dict(zip(table.columns, row, strict=True))
        where = chosen[(chosen["dataset"] == row["dataset"]) & (chosen["fraction"] == float(row["fraction"]))]
        mine, reference = (where[where["method"] == m] for m in (row["method"], row["against"]))
        out = comparisons.compare_pair(mine, reference, found, rope)
        assert f"{out['mean_diff']:+.1f}" == row["Δ"], row
        assert f"[{out['ci_low']:+.1f}, {out['ci_high']:+.1f}]" == row["95% CI"], row
        assert f"{out['p_better']:.2f}" == row["P(better)"] and str(out["seeds"]) == row["seeds"], row
        assert out["verdict"] == row["verdict"] or row["verdict"].startswith("not compared"), row
        # The observed difference, independently: scikit-learn's macro F1 of every seed, averaged.
        f1 = [sum(f1_score(found[r]["label"], found[r].filter(like="prob_").to_numpy().argmax(1), average="macro")
                  for r in cell["run_id"]) / len(cell) for cell in (mine, reference)]
        assert 100 * (f1[0] - f1[1]) == pytest.approx(out["mean_diff"], abs=1e-9), row
