"""Adaptive seeds (`seeds: {initial, max}`): which comparisons get another seed (sweep.report.seeds), and the
searcher's hook that walks the cells added (sweep.tune.searcher), on simulated predictions written to MLflow by
our own writers (tests.test_report.fake_sweep), without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.report import analysis, comparisons, predictions
from sweep.report.seeds import seeds_needed
from tests.test_report import fake_sweep
from trainables.simulated import simulated_predictions

IMAGES = 300
# Accuracy on the simulated test split (about 65% of it one class): bitfit a point above full (undecided on 300
# images: the 95% interval is several points wide), linear 11 points below it (decided from the first seeds, and
# above the majority class, so it learned).
ACCURACY = {"full": 0.85, "bitfit": 0.86, "linear": 0.74}


def _cell(method: str, seed: int) -> list[dict]:
    frame = simulated_predictions("d", "test", IMAGES, ACCURACY[method], f"{method}/seed={seed}", noise=0.3)
    right = (frame[["prob_0", "prob_1"]].to_numpy().argmax(1) == frame["label"].to_numpy())
    counts = np.bincount(frame["label"], minlength=2).tolist()
    return [{"lr": 1e-3, "val": ACCURACY[method], "test": float(right.mean()), "counts_val": [50, 50],
             "counts_test": counts, "predictions": frame}]


def _decide(uri: str, out, max_seeds: int):
    trials, cells = analysis.trials_table(uri, "s")
    chosen = analysis.chosen_trials(trials)
    found = predictions.load(uri, chosen["run_id"].tolist(), out)
    return seeds_needed(trials, cells, found, max_seeds), trials, chosen, found


def test_an_undecided_pair_gets_seeds_until_max_and_a_decided_one_gets_none(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)})
    rounds = []
    while True:
        decision, trials, chosen, found = _decide(uri, tmp_path / "cache", max_seeds=4)
        assert not decision.waiting
        if not decision.add:
            break
        rounds.append(sorted((line[-1], seed) for line, seed in decision.add.items()))
        fake_sweep(uri, "s", {("d", line[-1], 1.0, seed): _cell(line[-1], seed) for line, seed in decision.add.items()})
    # bitfit against full (also the best against the runner-up) is undecided: seeds 2 and 3 for both, then max.
    assert rounds == [[("bitfit", 2), ("full", 2)], [("bitfit", 3), ("full", 3)]]
    assert sorted(trials.groupby("method")["seed"].nunique().items()) == [("bitfit", 4), ("full", 4), ("linear", 2)]
    assert any("still undecided at 4 seeds, the most allowed" in why for why in decision.why)
    scores = analysis.method_scores(trials)
    final = comparisons.compare_cells(chosen, scores, found).set_index(["method", "reference"])
    assert final.loc[("linear", "full"), "verdict"] == "worse" and final.loc[("linear", "full"), "seeds"] == 2
    assert final.loc[("bitfit", "full"), "verdict"] == "undecided" and final.loc[("bitfit", "full"), "seeds"] == 4


def test_a_comparison_with_a_cell_still_running_waits(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cells = {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)}
    cells[("d", "full", 1.0, 1)][0]["status"] = "running"
    fake_sweep(uri, "s", cells)
    decision, *_ = _decide(uri, tmp_path / "cache", max_seeds=4)
    assert decision.waiting and not decision.add  # full is in both comparisons: nothing is decided yet


@pytest.mark.parametrize("max_seeds", [2])
def test_no_seed_beyond_max(tmp_path, max_seeds):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)})
    decision, *_ = _decide(uri, tmp_path / "cache", max_seeds=max_seeds)
    assert not decision.add and not decision.waiting
