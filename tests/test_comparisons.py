"""The paired bootstrap over test images (sweep.results.comparisons), against what is known independently: scikit-learn's
metrics with sample weights, the coverage of its interval in simulations whose true difference is computed from the
population's confusion rates, and the [min, max] coverage of the old three-seed bootstrap (1 - 2 (1/2)^3 = 75%)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score, matthews_corrcoef

from sweep.results import comparisons, trust
from sweep.results.comparisons import CellPredictions, paired_bootstrap, score_interval
from sweep.results.scores import bootstrap_ci


@pytest.mark.parametrize("metric", ["f1", "acc", "balanced_acc", "mcc"])
def test_metrics_from_weighted_confusions_match_scikit_learn_with_sample_weights(metric):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 90)
    labels[labels == 3] = 2  # class 3 is never true, but is predicted: macro F1 counts it, balanced accuracy not
    predicted = np.where(rng.random((2, 90)) < 0.6, labels, rng.integers(0, 4, (2, 90)))
    weights = rng.multinomial(90, np.full(90, 1 / 90), size=5).astype(float)
    weights[0, labels == 1] = 0  # a resample without class 1
    got = comparisons.metric_from_confusion(comparisons.confusions(labels, predicted, weights, 4), metric)
    reference = {"f1": lambda y, p, w: f1_score(y, p, average="macro", sample_weight=w, zero_division=0),
                 "acc": lambda y, p, w: np.average(y == p, weights=w),
                 "balanced_acc": lambda y, p, w: balanced_accuracy_score(y, p, sample_weight=w),
                 "mcc": lambda y, p, w: matthews_corrcoef(y, p, sample_weight=w)}[metric]
    for r in range(5):
        for s in range(2):
            assert got[r, s] == pytest.approx(reference(labels, predicted[s], weights[r]), abs=1e-12)


def _predictions(labels, predicted: dict[int, np.ndarray], groups=None) -> CellPredictions:
    n = len(labels)
    return CellPredictions(np.arange(n), np.asarray(labels), np.asarray(groups if groups is not None else [""] * n),
                           {s: np.asarray(p) for s, p in predicted.items()}, 2)


def test_identical_predictions_are_equivalent_and_ten_points_on_600_images_is_better():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    same = {s: np.where(rng.random(600) < 0.8, labels, 1 - labels) for s in range(3)}
    result = paired_bootstrap(_predictions(labels, same), _predictions(labels, same))
    assert result["verdict"] == "equivalent" and result["ci_low"] == result["ci_high"] == 0.0
    # a: right on 90% of the images, b: on 80%, errors drawn independently per seed: about 10 F1 points apart.
    a = {s: np.where(rng.random(600) < 0.9, labels, 1 - labels) for s in range(3)}
    b = {s: np.where(rng.random(600) < 0.8, labels, 1 - labels) for s in range(3)}
    result = paired_bootstrap(_predictions(labels, a), _predictions(labels, b))
    assert result["verdict"] == "better" and abs(result["mean_diff"] - 10) < 4 and result["p_better"] > 0.99
    assert result["ahead"] == "3 of 3" and np.isnan(result["sign_p"])  # no seed-level test below six seeds
    assert paired_bootstrap(_predictions(labels, b), _predictions(labels, a))["verdict"] == "worse"
    # One seed: still an interval (the images'), said to leave seed variation out.
    one = paired_bootstrap(_predictions(labels, {0: a[0]}), _predictions(labels, {0: b[0]}))
    assert one["verdict"] == "better" and "seed variation is not in it" in one["interval_over"]


def test_small_differences_on_few_images_are_undecided():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    a = {s: np.where(rng.random(80) < 0.8, labels, 1 - labels) for s in range(3)}
    b = {s: np.where(rng.random(80) < 0.78, labels, 1 - labels) for s in range(3)}
    assert paired_bootstrap(_predictions(labels, a), _predictions(labels, b))["verdict"] == "undecided"


def test_grouped_resampling_draws_every_group_whole():
    rng = np.random.default_rng(2)
    sizes = rng.integers(2, 6, 60)  # 60 patients with 2 to 5 images each
    groups = np.repeat([f"patient{i}" for i in range(60)], sizes)
    order = rng.permutation(len(groups))  # images of a patient need not be next to each other
    groups = groups[order]
    weights = comparisons.resample_weights(groups, 300, seed=5)
    for g in np.unique(groups):
        members = weights[:, groups == g]
        assert (members == members[:, :1]).all()  # every image of a group drawn as often as the group
    # As many groups are drawn as there are, so a resample has 60 patients' images (not 60 images' worth).
    per_group = pd.DataFrame(weights.T).groupby(groups).first().to_numpy()
    assert (per_group.sum(0) == 60).all()
    # Without groups each image is drawn on its own: as many images as the split has.
    assert (comparisons.resample_weights(np.array([""] * 50), 10, seed=1).sum(1) == 50).all()


# -- coverage, by simulation -------------------------------------------------------------------------------------

PREVALENCE = 0.3
# Per method: the probability of getting an image of class 0 and of class 1 right, in the population.
ACCURACY = {"a": (0.86, 0.74), "b": (0.84, 0.68)}
SHARED = 0.5  # share of the latent difficulty an image has for every method and seed (the rest: per seed)


def population_macro_f1(right0: float, right1: float, prevalence: float = PREVALENCE) -> float:
    """Macro F1 of a binary classifier from its population rates: TP/FP/FN as fractions of the population."""
    tp1, fn1, fp1 = prevalence * right1, prevalence * (1 - right1), (1 - prevalence) * (1 - right0)
    tp0, fn0, fp0 = (1 - prevalence) * right0, (1 - prevalence) * (1 - right0), prevalence * (1 - right1)
    return (2 * tp1 / (2 * tp1 + fn1 + fp1) + 2 * tp0 / (2 * tp0 + fn0 + fp0)) / 2


def _simulate(rng, images: int, seeds: int = 3, seed_sd: float = 0.0) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """A test set drawn from the population and each method's predictions for each seed: an image is right when
    its difficulty (shared by all methods and seeds, plus per-seed noise) is below its class's threshold, so that
    P(right | class) is the method's accuracy on that class and methods and seeds err on correlated images. Each
    seed's training shifts both its thresholds by a normal draw of SD `seed_sd` (probit units): its own expected
    score, as seed-to-seed variation of the training gives."""
    labels = (rng.random(images) < PREVALENCE).astype(int)
    shared = rng.standard_normal(images)
    out = {}
    for method, rates in ACCURACY.items():
        out[method] = {}
        for s in range(seeds):
            threshold = (stats.norm.ppf(np.asarray(rates)) + seed_sd * rng.standard_normal())[labels]
            latent = np.sqrt(SHARED) * shared + np.sqrt(1 - SHARED) * rng.standard_normal(images)
            out[method][s] = np.where(latent < threshold, labels, 1 - labels)
    return labels, out


def expected_macro_f1(method: str, seed_sd: float) -> float:
    """A method's population macro F1 averaged over its seeds' threshold shifts (Gauss-Hermite quadrature, 60
    nodes: exact to far below the Monte-Carlo error of any coverage here)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    f1 = [population_macro_f1(*stats.norm.cdf(stats.norm.ppf(np.asarray(ACCURACY[method])) + seed_sd * z))
          for z in nodes]
    return float(np.dot(weights, f1) / weights.sum())


# Seed shift SD (probit) -> (SD of one seed's expected macro F1 of method a, in points; coverage bounds). 400
# simulations: the Monte-Carlo SE of a coverage of 0.95 is 0.011, of 0.90 0.015.
SEED_SHIFTS = {0.0: (0.0, (0.93, 0.97)), 0.05: (1.4, (0.93, 0.97)), 0.1: (2.8, (0.93, 0.97))}


@pytest.mark.parametrize("seed_sd", SEED_SHIFTS)
def test_the_interval_covers_the_true_difference_with_and_without_seed_variation(seed_sd):
    """Test sets of 80 to 600 images, 3 seeds per method, each seed with its own expected score (seed SD 0, 1.4 and
    2.8 macro F1 points): the truth is the difference of the methods' expected population macro F1. Over images
    and seeds the interval covers 0.93-0.97 in all three (this run: 0.930, 0.960, 0.9375; pooled over four runs of
    400: 0.964, 0.960, 0.959), where resampling the images alone covered 0.94, 0.89 and 0.76, trusting the seed
    variance net of the images' share covered 0.89 at 2.8 points (three seeds' spread is often small by chance),
    and drawing the seeds without netting out the images' share over-covers (0.995 at no seed variation). 500
    resamples keep the test cheap (1,000 give the same coverages within 0.005)."""
    points, (low_bound, high_bound) = SEED_SHIFTS[seed_sd]
    spread = 100 * np.std([population_macro_f1(*stats.norm.cdf(stats.norm.ppf(np.asarray(ACCURACY["a"])) + seed_sd * z))
                           for z in np.random.default_rng(0).standard_normal(4000)])
    assert spread == pytest.approx(points, abs=0.1)
    truth = 100 * (expected_macro_f1("a", seed_sd) - expected_macro_f1("b", seed_sd))
    rng = np.random.default_rng(2024)
    sizes = [80, 156, 300, 600]
    covered, old_covered, simulations = 0, 0, 400
    for i in range(simulations):
        labels, predicted = _simulate(rng, sizes[i % len(sizes)], seed_sd=seed_sd)
        a, b = _predictions(labels, predicted["a"]), _predictions(labels, predicted["b"])
        result = paired_bootstrap(a, b, resamples=500, seed=i)
        covered += result["ci_low"] <= truth <= result["ci_high"]
        low, high = trust.paired_bootstrap_ci(np.array(result["per_seed"]), resamples=1000, seed=i)
        old_covered += low <= truth <= high
    assert low_bound <= covered / simulations <= high_bound
    # The old bootstrap over three seeds is their [min, max]: near 75% at best (it misses the test images' noise,
    # which the seeds share, as well).
    assert 0.60 <= old_covered / simulations <= 0.80


@pytest.mark.parametrize("seed_sd", SEED_SHIFTS)
def test_a_methods_score_interval_covers_its_expected_score(seed_sd):
    """The main table's interval for one method's seed-averaged score (score_interval), in the simulation above:
    the truth is the method's expected population macro F1 over its seeds' training draws. It covers 0.98, 0.978
    and 0.97 with no, 1.4- and 2.8-point seed variation (a little over 0.95: three seeds' spread, each seed erring
    on images of its own, is counted at the t quantile of 2 degrees of freedom), where the seeds' bootstrap the
    table showed before (their [min, max] at three seeds, blind to the test images) covered 0.56, 0.63 and 0.65."""
    truth = 100 * expected_macro_f1("a", seed_sd)
    rng = np.random.default_rng(77)
    sizes = [80, 156, 300, 600]
    covered, old_covered, simulations = 0, 0, 400
    for i in range(simulations):
        labels, predicted = _simulate(rng, sizes[i % len(sizes)], seed_sd=seed_sd)
        cell = _predictions(labels, predicted["a"])
        mean, low, high = score_interval(cell, resamples=500, seed=i)
        per_seed = [100 * f1_score(labels, p, average="macro") for p in predicted["a"].values()]
        assert mean == pytest.approx(np.mean(per_seed))
        covered += low <= truth <= high
        old_low, old_high = bootstrap_ci(np.array(per_seed), resamples=1000, seed=i)
        old_covered += old_low <= truth <= old_high
    assert 0.93 <= covered / simulations <= 0.99, (covered / simulations, old_covered / simulations)
    assert old_covered / simulations <= 0.75, (covered / simulations, old_covered / simulations)


def test_the_old_three_seed_bootstrap_covers_75_percent_where_seeds_are_the_only_noise():
    """Three per-seed differences scattered symmetrically around the truth: the percentile bootstrap of their mean
    is their [min, max], which misses the truth when all three fall on one side: 1 - 2 (1/2)^3 = 75%."""
    rng = np.random.default_rng(7)
    differences = 2.0 + rng.standard_normal((1000, 3))
    covered = [low <= 2.0 <= high for low, high in (trust.paired_bootstrap_ci(d, resamples=400, seed=i)
                                                    for i, d in enumerate(differences))]
    assert np.mean(covered) == pytest.approx(0.75, abs=0.04)


def test_across_five_datasets_the_best_possible_p_is_0_0625_and_the_diagram_is_drawn(tmp_path):
    """Method a ahead of b on all five datasets, b ahead of c on all five: exact two-sided Wilcoxon p = 2/2^5."""
    from sweep.report import sections
    from sweep.report.document import Document

    rows = []
    for i, dataset in enumerate("vwxyz"):
        for method, score in (("a", 90 - i), ("b", 85 - 2 * i), ("c", 70 + 0.5 * i), ("d", 60.0)):
            rows.append({"task": "classification", "backbone": "bb", "fraction": 1.0, "dataset": dataset,
                         "method": method, "oriented": score, "learned": method != "d" or dataset != "z"})
    (ranking,) = comparisons.across_datasets(pd.DataFrame(rows))
    assert list(ranking.ranks.index) == ["a", "b", "c"]  # d did not learn on z: left out, not ranked on four
    assert ranking.ranks.tolist() == [1.0, 2.0, 3.0] and ranking.ahead == "5 of 5"
    assert ranking.wilcoxon_p == pytest.approx(2 / 2**5) and ranking.smallest_p == pytest.approx(0.0625)
    # Holm over the three pairs, each p = 0.0625: 3p, 2p, p, made monotone: all 0.1875 (capped at 1).
    assert ranking.holm.loc["a", "b"] == pytest.approx(min(1, 3 * 0.0625))
    assert (ranking.holm.to_numpy() == ranking.holm.to_numpy().T).all()
    # The report's section says so, and draws the diagram.
    doc, files = Document("t"), []
    sections.across_datasets(doc, pd.DataFrame(rows), tmp_path, files)
    text = doc.markdown()
    assert "With 5 datasets the smallest two-sided p any such test can give is 0.0625: a ranking over so few " \
           "datasets is descriptive, not a finding." in text
    assert "**a** ranks first" in text and "ahead of b (2.00) on 5 of 5 datasets" in text
    (path,) = files
    assert path.name == "cd-bb-1.png" and path.stat().st_size > 1000


def test_the_dry_run_says_how_finely_each_test_set_resolves_a_score(capsys, tmp_path):
    """The default sweep's BreastMNIST (shipped): its published test split has 156 images, where a score of 0.8
    has a 95% half-width of 1.96 sqrt(0.8 x 0.2 / 156) = 6.3 points. With adaptive seeds (3, up to 10) the cost is a
    range: the quickstart's 2 fractions x 4 methods x 3 seeds x 3 trials x 6 epochs = 432 trial-epochs at most as
    planned, and 10/3 of it if every comparison takes all ten seeds."""
    from sweep.launch import main

    assert main(["--storage", str(tmp_path / "store"), "--dry-run", "--set", "seeds={initial: 3, max: 10}"]) == 0
    out = capsys.readouterr().out
    assert f"breastmnist: 156 test images, ±{100 * 1.96 * np.sqrt(0.8 * 0.2 / 156):.1f} points" in out
    assert "±6.3 points" in out
    trials = 2 * 4 * 3 * 3
    assert f"Cost: at most {trials * 6:,} trial-epochs" in out
    assert (f"up to 10: the cost is between the above and 3.33 times it (at most {trials * 6 * 10 // 3:,} "
            f"trial-epochs, {trials * 10 // 3:,} trials)") in out


def test_the_compact_predictions_give_every_interval_the_full_ones_give():
    """The report's predictions.parquet keeps each chosen trial's predicted class only: a comparison recomputed from
    it is the one from the logged probabilities, to the last digit (both bootstraps see the same classes)."""
    from sweep.results import predictions
    from trainables.contract import PRED_GROUP, PRED_LABEL, PRED_ROW, PRED_SPLIT

    rng = np.random.default_rng(3)
    images, classes = 120, 3
    labels = rng.integers(0, classes, images)

    def frame(seed: int) -> pd.DataFrame:
        probs = np.random.default_rng(seed).dirichlet(np.ones(classes), images + 10)
        split = ["val"] * 10 + ["test"] * images
        return pd.DataFrame({PRED_SPLIT: split, PRED_ROW: np.r_[np.arange(1000, 1010), np.arange(images)[::-1]],
                             PRED_GROUP: "", PRED_LABEL: np.r_[np.zeros(10, int), labels[::-1]],
                             **{f"prob_{c}": probs[:, c] for c in range(classes)}})

    logged = {f"run{s}": frame(s) for s in range(4)}
    back = predictions.from_compact(predictions.compact(logged))
    assert sorted(back) == sorted(logged) and all(len(f) == images for f in back.values())
    cells = [({0: logged["run0"], 1: logged["run1"]}, {0: logged["run2"], 1: logged["run3"]}),
             ({0: back["run0"], 1: back["run1"]}, {0: back["run2"], 1: back["run3"]})]
    full, compacted = (paired_bootstrap(CellPredictions.from_frames(a), CellPredictions.from_frames(b))
                       for a, b in cells)
    assert compacted == full
    # And the observed difference is scikit-learn's macro F1, seed-averaged, from the compact table alone.
    table = predictions.compact(logged).sort_values(["run_id", PRED_ROW])
    f1 = {r: f1_score(t[PRED_LABEL], t["predicted"], average="macro") for r, t in table.groupby("run_id", observed=True)}
    assert compacted["mean_diff"] == pytest.approx(100 * ((f1["run0"] + f1["run1"]) - (f1["run2"] + f1["run3"])) / 2)
