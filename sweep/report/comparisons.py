"""Comparisons that count the test images: a paired bootstrap over test images, pooled over seeds.

Every seed of a cell is scored on the same test images, so the spread of a handful of seeds misses the test set's
own sampling noise (±6 F1 points on BreastMNIST's 156 images), and a percentile bootstrap of three per-seed
differences is their [min, max], a 75% interval. Here, following Ferrer's protocol (github luferrer/
ConfidenceIntervals): each resample draws test images with replacement (whole groups where the split has patient
or lesion groups), the same draw for both methods and every seed; the metric of each method is recomputed per seed
on that resample (macro F1 is not a mean of per-image scores), averaged over the seeds, and differenced.

Verdicts: 'better' / 'worse' when the 95% interval excludes zero; 'equivalent' when it lies inside the region of
practical equivalence (±rope points); 'undecided' otherwise. A seed-level sign test and Wilcoxon test are given
from MIN_SEEDS_FOR_TESTS seeds on (with n seeds the smallest two-sided p is 2/2^n: 0.25 at 3, 0.031 at 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from trainables.contract import PRED_GROUP, PRED_LABEL, PRED_ROW, PRED_SPLIT
from trainables.predictions import probabilities

RESAMPLES = 2000
LEVEL = 0.95
MIN_SEEDS_FOR_TESTS = 6  # the first n where 2/2^n < 0.05
BOOTSTRAP_SEED = 20_240_101  # resamples are seeded: the report is the same every time it is built
DEFAULT_ROPE = 1.0  # points: differences within ±1 F1 point are practically equivalent
VERDICTS = ("better", "worse", "equivalent", "undecided")
CONFUSION_METRICS = ("f1", "acc", "balanced_acc", "mcc")  # what can be recomputed from a confusion matrix


@dataclass(frozen=True)
class CellPredictions:
    """One cell's predicted classes on its test split, for each of its seeds, aligned on the manifest's rows."""

    rows: np.ndarray  # (n,) manifest row ids, ascending
    labels: np.ndarray  # (n,) true class
    groups: np.ndarray  # (n,) group id ("" where none: every image is its own group)
    predicted: dict[int, np.ndarray]  # seed -> (n,) predicted class
    classes: int

    @classmethod
    def from_frames(cls, frames: dict[int, pd.DataFrame]) -> CellPredictions:
        """From each seed's predictions table (trainables.contract.PREDICTIONS_ARTIFACT), its test rows."""
        first = None
        predicted = {}
        classes = 0
        for seed, frame in sorted(frames.items()):
            test = frame[frame[PRED_SPLIT] == "test"].sort_values(PRED_ROW)
            probs = probabilities(test)
            classes = max(classes, probs.shape[1])
            if first is None:
                first = test
            elif not np.array_equal(test[PRED_ROW].to_numpy(), first[PRED_ROW].to_numpy()):
                raise ValueError(f"seed {seed} was tested on other images than seed {min(frames)}")
            predicted[seed] = probs.argmax(1)
        if first is None:
            raise ValueError("no predictions")
        return cls(first[PRED_ROW].to_numpy(), first[PRED_LABEL].to_numpy(),
                   first[PRED_GROUP].fillna("").astype(str).to_numpy(), predicted, classes)


def resample_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) counts: how often each image is in each bootstrap resample. Groups are drawn whole, with
    replacement, as many as the split has; an image without a group ("") is a group of its own."""
    codes, _ = pd.factorize(pd.Series(groups, dtype=str), sort=False)
    alone = np.asarray(groups, dtype=str) == ""
    codes[alone] = codes.max() + 1 + np.arange(alone.sum())  # no group: a group of its own
    _, index = np.unique(codes, return_inverse=True)  # consecutive codes 0..count-1
    count = int(index.max()) + 1
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, count, size=(resamples, count))  # which groups each resample draws
    drawn = np.bincount((np.arange(resamples)[:, None] * count + picks).ravel(),
                        minlength=resamples * count).reshape(resamples, count)
    if np.array_equal(index, np.arange(len(index))):  # every image its own group, in order
        return drawn.astype(np.float64)
    return drawn[:, index].astype(np.float64)


def confusions(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray, classes: int) -> np.ndarray:
    """Weighted confusion matrices: (resamples, seeds, classes, classes), rows true, columns predicted, for
    predicted classes (seeds, images) and per-image weights (resamples, images). One matrix product for all."""
    predicted = np.atleast_2d(predicted)
    seeds, images = predicted.shape
    cell = labels[None, :] * classes + predicted  # (seeds, images): which confusion entry each image lands in
    onehot = np.zeros((images, seeds * classes * classes), dtype=weights.dtype)
    onehot[np.arange(images)[None, :], np.arange(seeds)[:, None] * classes * classes + cell] = 1.0
    return (weights @ onehot).reshape(len(weights), seeds, classes, classes)


def metric_from_confusion(confusion: np.ndarray, metric: str) -> np.ndarray:
    """A metric of every confusion matrix of an (..., K, K) stack, by scikit-learn's definitions (macro F1 over the
    classes present in the labels or the predictions, a class never predicted right scoring 0; balanced accuracy
    over the classes present in the labels; multi-class MCC, 0 where undefined)."""
    c = np.asarray(confusion, dtype=np.float64)
    diagonal = np.diagonal(c, axis1=-2, axis2=-1)
    true, predicted = c.sum(-1), c.sum(-2)
    total = true.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "acc":
            return diagonal.sum(-1) / total
        if metric == "f1":
            denominator = true + predicted
            present = denominator > 0
            f1 = np.where(present, 2 * diagonal / np.where(present, denominator, 1), 0.0)
            return f1.sum(-1) / present.sum(-1)
        if metric == "balanced_acc":
            present = true > 0
            recall = np.where(present, diagonal / np.where(present, true, 1), 0.0)
            return recall.sum(-1) / present.sum(-1)
        if metric == "mcc":
            correct = diagonal.sum(-1)
            covariance = correct * total - (predicted * true).sum(-1)
            denominator = np.sqrt((total**2 - (predicted**2).sum(-1)) * (total**2 - (true**2).sum(-1)))
            return np.where(denominator > 0, covariance / np.where(denominator > 0, denominator, 1), 0.0)
    raise ValueError(f"{metric!r} cannot be recomputed from a confusion matrix; one of {CONFUSION_METRICS}")


def verdict(low: float, high: float, rope: float) -> str:
    """'better' / 'worse' when the interval excludes zero, 'equivalent' when it lies within ±rope, else
    'undecided'."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -rope <= low and high <= rope:
        return "equivalent"
    return "undecided"


def paired_bootstrap(a: CellPredictions, b: CellPredictions, metric: str = "f1", scale: float = 100.0,
                     rope: float = DEFAULT_ROPE, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     higher_is_better: bool = True) -> dict[str, object]:
    """Method a against method b on the same test images: the difference of their seed-averaged metric (in
    `scale` units, positive: a is better), its percentile 95% interval over resamples of the test images (both
    methods and all seeds on the same draw), P(a is better), the per-seed differences on the whole test set over
    the seeds both have, and the verdict."""
    if not np.array_equal(a.rows, b.rows):
        raise ValueError("the two cells were tested on different images")
    classes = max(a.classes, b.classes)
    weights = np.vstack([np.ones(len(a.rows)), resample_weights(a.groups, resamples, seed)])  # row 0: as observed
    # Both methods' seeds in one matrix product: every seed of both on the same resamples.
    predicted = np.stack([cell.predicted[s] for cell in (a, b) for s in sorted(cell.predicted)])
    scores = metric_from_confusion(confusions(a.labels, predicted, weights, classes), metric) * scale
    per_method = [scores[:, : len(a.predicted)], scores[:, len(a.predicted) :]]
    sign = 1.0 if higher_is_better else -1.0
    differences = sign * (per_method[0].mean(1) - per_method[1].mean(1))  # (1 + resamples,)
    observed, boot = float(differences[0]), differences[1:]
    tail = (1 - LEVEL) / 2 * 100
    low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    common = sorted(set(a.predicted) & set(b.predicted))
    seeds_a, seeds_b = sorted(a.predicted), sorted(b.predicted)
    per_seed = [float(sign * (per_method[0][0, seeds_a.index(s)] - per_method[1][0, seeds_b.index(s)]))
                for s in common]
    return {
        "seeds": len(common), "seeds_a": len(seeds_a), "seeds_b": len(seeds_b), "images": len(a.rows),
        "groups": int(len(set(a.groups) - {""}) + (a.groups == "").sum()),
        "mean_diff": observed, "ci_low": low, "ci_high": high,
        "p_better": float(np.mean(boot > 0) + 0.5 * np.mean(boot == 0)),
        "per_seed": per_seed, "ahead": f"{sum(d > 0 for d in per_seed)} of {len(per_seed)}",
        **seed_tests(per_seed),
        "verdict": verdict(low, high, rope),
        "interval_over": "test images and seeds" if min(len(seeds_a), len(seeds_b)) > 1 else
                         "test images only (one seed: seed variation is not in it)",
    }


def seed_tests(per_seed: list[float]) -> dict[str, float]:
    """Two-sided exact sign test and Wilcoxon signed-rank test of per-seed differences (zeros dropped), from
    MIN_SEEDS_FOR_TESTS seeds on; NaN below (no p under 0.05 is possible there)."""
    d = np.asarray(per_seed, dtype=float)
    if len(d) < MIN_SEEDS_FOR_TESTS:
        return {"sign_p": math.nan, "wilcoxon_p": math.nan}
    return {"sign_p": sign_test(d), "wilcoxon_p": wilcoxon(d)}


def sign_test(differences: np.ndarray) -> float:
    """Two-sided exact sign test, ties dropped (scipy.stats.binomtest)."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    return float(stats.binomtest(int((d > 0).sum()), len(d)).pvalue) if len(d) else 1.0


def wilcoxon(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test, zeros dropped (scipy.stats.wilcoxon; exact for few pairs)."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    return float(stats.wilcoxon(d).pvalue) if len(d) else 1.0
