"""The checks that keep artefacts out of the answer (sweep.results.trust), against direct computations: scikit-learn on
explicit predictions, simulation, scipy's exact tests, and the bootstrap enumerated exhaustively."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from sweep.results import trust


@pytest.mark.parametrize("counts", [[21, 57], [42, 114], [50, 50], [3, 10, 40, 7], [150, 150, 150, 115, 150, 150, 142]])
def test_trivial_score_is_the_best_classifier_that_ignores_the_image(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    majority = np.full(len(labels), int(np.argmax(counts)))
    rng = np.random.default_rng(0)
    p = np.asarray(counts) / sum(counts)
    proportional = [f1_score(labels, rng.choice(len(counts), len(labels), p=p), average="macro") for _ in range(400)]
    uniform = [f1_score(labels, rng.integers(0, len(counts), len(labels)), average="macro") for _ in range(400)]
    expected_f1 = max(f1_score(labels, majority, average="macro"), np.mean(proportional), np.mean(uniform))
    assert trust.trivial_score(counts, "f1") == pytest.approx(expected_f1, abs=0.02)
    assert trust.trivial_score(counts, "acc") == pytest.approx(accuracy_score(labels, majority))
    assert trust.trivial_score(counts, "balanced_acc") == pytest.approx(balanced_accuracy_score(labels, majority))
    assert trust.trivial_score(counts, "auroc") == 0.5 and trust.trivial_score(counts, "mcc") == 0.0
    assert math.isnan(trust.trivial_score(counts, "fid"))


def test_a_collapsed_classifier_did_not_learn_and_a_good_one_did():
    # BreastMNIST validation: 21 malignant, 57 other. Always "other": accuracy 73%, but that is the trivial score.
    trivial_acc = trust.trivial_score([21, 57], "acc")
    assert trust.learned(np.array([57 / 78]), trivial_acc, 78) == (False, pytest.approx(1.96 * math.sqrt(
        (57 / 78) * (21 / 78) / 78)))
    ok, noise = trust.learned(np.array([0.86]), trust.trivial_score([21, 57], "f1"), 78)
    assert ok and noise == pytest.approx(1.96 * math.sqrt(0.86 * 0.14 / 78))
    # Three seeds that disagree a lot: the seeds' spread is the noise.
    ok, noise = trust.learned(np.array([0.40, 0.75, 0.95]), 0.5, 10_000)
    assert not ok and noise == pytest.approx(1.96 * np.std([0.40, 0.75, 0.95], ddof=1) / math.sqrt(3))
    assert trust.learned(np.array([30.0]), math.nan, 100) == (None, pytest.approx(math.nan, nan_ok=True))


def test_paired_bootstrap_matches_the_exhaustive_bootstrap():
    differences = np.array([1.5, -0.5, 4.0])
    means = sorted(np.mean(r) for r in itertools.product(differences, repeat=3))  # all 27 resamples, equally likely
    low, high = trust.paired_bootstrap_ci(differences, resamples=20_000)
    assert low == pytest.approx(np.percentile(means, 2.5, method="inverted_cdf"), abs=0.25)
    assert high == pytest.approx(np.percentile(means, 97.5, method="inverted_cdf"), abs=0.25)
    assert math.isnan(trust.paired_bootstrap_ci(np.array([2.0]))[0])


def _wilcoxon_by_enumeration(d: np.ndarray) -> float:
    """Two-sided exact Wilcoxon signed-rank p: the share of the 2^n sign assignments whose W+ is at least as far
    from its null mean as the observed one (distinct |d|, so ranks are 1..n)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    observed, center = ranks[d > 0].sum(), ranks.sum() / 2
    extreme = sum(abs(float(np.dot(signs, ranks)) - center) >= abs(observed - center) - 1e-9
                  for signs in itertools.product((0, 1), repeat=len(d)))
    return extreme / 2 ** len(d)


@pytest.mark.parametrize("differences", [[3.0, 2.0, 1.0, 4.0, 5.0, 6.0], [3.0, 2.0, 1.0, 4.0, 5.0, -6.0],
                                         [-1.0, 2.0, -3.0, 4.0, 0.5, 7.0, 0.0]])
def test_sign_and_wilcoxon_tests_from_six_seeds(differences):
    d = np.array(differences)
    nonzero = d[d != 0]
    k, n = int((nonzero > 0).sum()), len(nonzero)
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n  # the binomial tail, by its definition
    tests = trust.seed_tests(list(d))
    assert tests["sign_p"] == pytest.approx(min(1.0, 2 * tail))
    assert tests["wilcoxon_p"] == pytest.approx(_wilcoxon_by_enumeration(nonzero))
    # Six seeds all ahead: 2/2^6, the smallest p six seeds can give; five seeds get no test at all (2/2^5 > 0.05).
    if k == n == 6:
        assert tests["sign_p"] == pytest.approx(2 / 64) and tests["wilcoxon_p"] == pytest.approx(2 / 64)
    assert all(math.isnan(p) for p in trust.seed_tests(list(d[:5])).values())


def test_verdicts_one_seed_cannot_tell_and_an_interval_excluding_zero_decides():
    assert trust.paired_comparison(np.array([12.0]))["verdict"] == "cannot tell (one seed)"
    assert trust.paired_comparison(np.array([3.0, 4.0, 5.0, 3.5, 4.5]))["verdict"] == "better"
    assert trust.paired_comparison(np.array([-3.0, -4.0, -5.0]))["verdict"] == "worse"
    assert trust.paired_comparison(np.array([3.0, -4.0, 1.0]))["verdict"] == "no clear difference"


def test_not_converged_is_the_validation_score_still_rising_at_the_end():
    """The contract's one definition, on hand-written best-so-far score histories (5 epochs: the last two looked at,
    tolerance 0.01): 0.70 -> 0.78 over epochs 3..5 is still rising; 0.80 held for three epochs is not."""
    from trainables.contract import still_improving

    assert still_improving([0.60, 0.65, 0.70, 0.74, 0.78])  # best rose 0.08 over its last two epochs
    assert not still_improving([0.60, 0.75, 0.80, 0.80, 0.80])  # plateaued
    assert not still_improving([0.60, 0.75, 0.80, 0.80, 0.805])  # +0.005: within the tolerance
    assert still_improving([0.60, 0.75, 0.80, 0.80, 0.805], tolerance=0.001)
    assert not still_improving({1: 0.5, 2: 0.9})  # two epochs: not judged
    assert still_improving({3: 0.70, 1: 0.5, 2: 0.6})  # by epoch, whatever the order given
    # Lower-is-better histories (a loss) rise when they fall.
    assert still_improving([0.9, 0.8, 0.6, 0.5, 0.4], higher_is_better=False)


def test_lr_and_the_other_searched_knobs_at_the_edge():
    """Cell a: learning rate and weight decay both at the top of what it tried; b: both inside; c: one weight decay
    tried (no range to be at the edge of), learning rate at the bottom."""
    trials = pd.DataFrame({"cell_key": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                           "searched.lr": [1e-4, 1e-3, 1e-2] * 3,
                           "searched.weight_decay": [1e-4, 1e-3, 1e-2] * 2 + [0.05] * 3})
    chosen = pd.DataFrame({"cell_key": ["a", "b", "c"], "searched.lr": [1e-2, 1e-3, 1e-4],
                           "searched.weight_decay": [1e-2, 1e-3, 0.05]})
    assert trust.at_edge(trials, chosen).to_dict() == {"a": "high", "b": "", "c": "low"}
    assert trust.knobs_at_edge(trials, chosen).to_dict() == {"a": "weight_decay high", "b": "", "c": ""}
    assert trust.knobs_at_edge(trials[["cell_key", "searched.lr"]], chosen).to_dict() == {"a": "", "b": "", "c": ""}


def test_a_tie_in_wins_goes_to_the_larger_margin_not_the_name():
    """'aaa' and 'zzz' win one dataset each; 'zzz' wins its dataset by 10 points and loses the other by 1, 'aaa'
    the reverse: 'zzz' is recommended, with its mean difference to the best other method (10 - 1) / 2 = +4.5."""
    from sweep.report.analysis import recommendations

    scores = {("d1", "aaa"): 71.0, ("d1", "zzz"): 70.0, ("d1", "full"): 60.0,
              ("d2", "aaa"): 60.0, ("d2", "zzz"): 70.0, ("d2", "full"): 50.0}
    rows = [{"task": "classification", "backbone": "b", "fraction": 1.0, "dataset": d, "method": m, "oriented": v,
             "learned": True, "unit": "%", "metric": "test/f1", "noise": 1.0} for (d, m), v in scores.items()]
    frame = pd.DataFrame(rows)
    frame["winner"] = frame.groupby("dataset")["oriented"].transform("max") == frame["oriented"]
    (line,) = recommendations(frame)
    assert "**zzz**" in line and "best other method +4.5 points" in line
