"""Comparisons that count the test images: a paired bootstrap over test images and seeds.

Every seed of a cell is scored on the same test images, so the spread of a handful of seeds misses the test set's
own sampling noise (±6 F1 points on BreastMNIST's 156 images), and a percentile bootstrap of three per-seed
differences is their [min, max], a 75% interval. Here, following Ferrer's protocol (github luferrer/
ConfidenceIntervals): each resample draws test images with replacement (whole groups where the split has patient
or lesion groups), the same draw for both methods and every seed; the metric of each method is recomputed per seed
on that resample (macro F1 is not a mean of per-image scores), averaged over the seeds, and differenced.

Seeds vary too: each seed's training has its own expected score, which no resample of the images sees (the seeds'
shared test set does not vary it). So each resample also draws the seeds with replacement (paired: a drawn seed
brings both methods' predictions of it; seed_spread). Drawing the seeds naively counts twice the part of the seeds'
spread that is the test images' (each seed errs on its own images, which the image draw already counts): coverage
0.995 in tests/test_comparisons.py's simulation. So the seed draw is scaled to the seed variance net of that part
(a method of moments, as for crossed random effects) and by n/(n-1) for the n seeds' plug-in variance: that
draw gives P(better). The interval itself is built from the two parts of the seed mean's variance: what the seeds'
spread holds (each seed's own expected score and its own errors on the images: spread/n, resting on n-1 degrees of
freedom, so a t quantile: 4.30 at three seeds) and the images' shared part (the image resamples' variance less what
the spread already holds: many degrees of freedom, a normal quantile), their half-widths added in quadrature. A
small spread of three seeds is often chance, so trusting the seed variance net of the images (and widening by t at
its Welch-Satterthwaite degrees of freedom) covered only 0.89 where seeds dominate. In tests/test_comparisons.py's
simulation (test sets of 80-600 images, 3 seeds, 1,600 runs) this interval covers 0.96 with no seed variation,
0.96 with a seed SD of 1.4 macro F1 points and 0.96 at 2.8, where resampling the images alone covered 0.94, 0.89
and 0.76. The price is width: at three seeds the t quantile is more than twice the normal one.

Verdicts: 'better' / 'worse' when the 95% interval excludes zero; 'equivalent' when it lies inside the region of
practical equivalence (±rope points); 'undecided' otherwise. A seed-level sign test and Wilcoxon test are given
from sweep.results.trust.MIN_SEEDS_FOR_TESTS seeds on (with n seeds the smallest two-sided p is 2/2^n: 0.25 at 3, 0.031 at 6).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from sweep.plan.spec import ReportSpec
from sweep.results import trust
from sweep.results.cell_outcome import cell_outcomes
from sweep.results.scores import method_scores
from trainables.contract import PRED_GROUP, PRED_LABEL, PRED_ROW, PRED_SPLIT
from trainables.predictions import probabilities

RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 20_240_101  # resamples are seeded: the report is the same every time it is built
DEFAULT_ROPE = ReportSpec().rope  # points: the spec's report.rope when the spec does not say
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


def seed_spread(scores: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float, float, int]:
    """What drawing the seeds adds to each resample's seed mean: `scores` is (1 + resamples, seeds), row 0 on the
    test images as observed, each other row on one image resample. Each resample draws the seeds with replacement;
    its mean's deviation from the resample's own seed mean is scaled so that its variance is the seed variance net
    of the images' share, over n: the seeds' spread on resampled images exceeds the observed spread by the images'
    contribution to it (each seed errs on images of its own), which the image draw already counts; subtracting it
    once from the observed spread leaves the seeds' own variance (clipped to [0, observed]). The n/(n-1) turns the
    draw's plug-in variance into the unbiased one. One seed: nothing (seed variation is not in the interval).
    Returns the term, the seed variance of the mean it adds, the observed spread over n, the images' share of it
    over n, and the seeds it rests on (for the interval: paired_bootstrap)."""
    observed, boot = scores[0], scores[1:]
    n = observed.size
    spread = observed.var(ddof=1) if n > 1 else 0.0
    if spread <= 0:
        return np.zeros(len(boot)), 0.0, 0.0, 0.0, n
    share = max(float(boot.var(axis=1, ddof=1).mean()) - spread, 0.0)  # the images' share of the seeds' spread
    own = float(np.clip(spread - share, 0.0, spread))  # the seeds' own variance
    picks = rng.integers(0, n, size=boot.shape)
    deviation = np.take_along_axis(boot, picks, axis=1).mean(1) - boot.mean(1)
    return np.sqrt(n / (n - 1) * own / spread) * deviation, own / n, spread / n, share / n, n


def two_part_interval(observed: float, boot: np.ndarray, images_variance: float,
                      parts: list[tuple[np.ndarray, float, float, float, int]]) -> tuple[float, float]:
    """The 95% interval of a seed-averaged score or difference: `boot` its image resamples with the seeds' draw
    added (seed_spread's terms), `images_variance` the image resamples' variance before that, `parts` seed_spread's
    returns (one per set of seeds drawn). The percentile interval of `boot` where the seeds add nothing (one seed,
    or seeds that agree); else two parts added in quadrature (below)."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    # The seeds' variance rests on n seeds (2 degrees of freedom at 3), which no resampling repairs, and a small
    # spread of three seeds is often chance: the seed-drawn percentiles (and widening them by t at Welch-
    # Satterthwaite degrees of freedom of the estimated seed variance) cover 0.89 where seeds dominate. So the
    # interval splits the observed value's variance into what the seeds' spread holds (the seeds' own variance and
    # each seed's own errors on the images: spread/n, n-1 degrees of freedom, t quantile) and the images' shared
    # part (the image resamples' variance less each seed's own image errors, which the spread holds: many degrees
    # of freedom, normal quantile), each half-width by its own quantile, added in quadrature.
    spreads = [(spread, n) for _, _, spread, _, n in parts if spread > 0]
    if spreads:
        shared = max(images_variance - sum(share for *_, share, _ in parts), 0.0)
        seeds_half = math.sqrt(sum(stats.t.ppf(1 - tail / 100, n - 1) ** 2 * spread for spread, n in spreads))
        half = math.hypot(stats.norm.ppf(1 - tail / 100) * math.sqrt(shared), seeds_half)
        low, high = observed - half, observed + half
    return low, high


def score_interval(cell: CellPredictions, metric: str = "f1", scale: float = 100.0, resamples: int = RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """One cell's seed-averaged test score (in `scale` units) and its 95% interval over the test images and the
    seeds: what paired_bootstrap gives a difference, for the score itself (the main table's interval). Over three
    seeds the seeds' bootstrap alone is their [min, max] and covers about 75%; this one counts the test set's own
    noise too."""
    weights = np.vstack([np.ones(len(cell.rows)), resample_weights(cell.groups, resamples, seed)])
    predicted = np.stack([cell.predicted[s] for s in sorted(cell.predicted)])
    scores = metric_from_confusion(confusions(cell.labels, predicted, weights, cell.classes), metric) * scale
    means = scores.mean(1)
    images_variance = float(means[1:].var())
    parts = [seed_spread(scores, np.random.default_rng([seed, 1]))]
    boot = means[1:] + parts[0][0]
    return (float(means[0]), *two_part_interval(float(means[0]), boot, images_variance, parts))


def with_score_intervals(scores: pd.DataFrame, chosen: pd.DataFrame,
                         predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """method_scores' lines with ci_low/ci_high over the test images and the seeds (score_interval) where every
    seed of the line left predictions and the metric can be recomputed from them; `ci_over` says which interval
    each line has (the others keep the seeds' bootstrap)."""
    scores = scores.copy()
    scores["ci_over"] = "seeds only: the test images' sampling noise is not in it"
    keys = ["task", "backbone", "dataset", "fraction", "method"]
    for index, line in scores.iterrows():
        metric = str(line["metric"]).rsplit("/", 1)[-1]
        cells = chosen[(chosen[keys] == line[keys]).all(axis=1)]
        frames = {int(s): predictions.get(r) for s, r in zip(cells["seed"], cells["run_id"], strict=True)}
        if metric not in CONFUSION_METRICS or not frames or any(f is None for f in frames.values()):
            continue
        scale = 100.0 if metric in PERCENT_METRICS else 1.0
        _, low, high = score_interval(CellPredictions.from_frames(frames), metric, scale)
        scores.loc[index, ["ci_low", "ci_high", "ci_over"]] = [low, high, BASIS_IMAGES]
    return scores


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
    methods and all seeds on the same draw) and of the seeds (seed_spread), P(a is better), the per-seed
    differences on the whole test set over the seeds both have, and the verdict."""
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
    draws = np.random.default_rng([seed, 1])  # the seeds' draw: a stream of its own, as reproducible as the images'
    images_variance = float(differences[1:].var())
    if sorted(a.predicted) == sorted(b.predicted):  # paired: a drawn seed brings both methods' predictions of it
        parts = [seed_spread(per_method[0] - per_method[1], draws)]
    else:  # seeds not shared (one cell has more): each method's seeds drawn on their own
        parts = [seed_spread(per_method[0], draws), seed_spread(-per_method[1], draws)]
    for term, *_ in parts:
        differences[1:] += sign * term
    observed, boot = float(differences[0]), differences[1:]
    low, high = two_part_interval(observed, boot, images_variance, parts)
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
        **trust.seed_tests(per_seed),
        "verdict": verdict(low, high, rope),
        "interval_over": "test images and seeds" if min(len(seeds_a), len(seeds_b)) > 1 else
                         "test images only (one seed: seed variation is not in it)" if max(len(seeds_a), len(seeds_b)) == 1
                         else "test images, and the seeds of the side that has several (the other has one seed: its "
                              "seed variation is not in it)",
    }


# -- the comparisons a report states -----------------------------------------------------------------------------

WHERE = ["task", "backbone", "dataset", "fraction"]
COLUMNS = [*WHERE, "method", "reference", "kind", "basis", "unit", "seeds", "images", "mean_diff", "ci_low",
           "ci_high", "p_better", "ahead", "sign_p", "wilcoxon_p", "verdict", "interval_over"]
PERCENT_METRICS = ("f1", "acc", "balanced_acc", "auroc")
BASIS_IMAGES = "test images and seeds"
BASIS_SEEDS = "seeds only (no per-image predictions)"


def from_results(trials: pd.DataFrame, predictions: dict[str, pd.DataFrame], rope: float = DEFAULT_ROPE,
                 keep: Callable[[Mapping[str, object]], bool] | None = None) -> pd.DataFrame:
    """The report's comparisons from the trials table alone (results.parquet, sweep.results.table.trials_table) and
    the chosen trials' predictions ({run id: table}: sweep.results.predictions.load, or from_compact of the
    committed file), with no MLflow: the report builds its table here, and a committed study's table is
    recomputed here from its files. `keep`: see compare_cells."""
    chosen = cell_outcomes(trials)
    return compare_cells(chosen, method_scores(trials, chosen), predictions, rope, keep)


def compare_cells(chosen: pd.DataFrame, scores: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                  rope: float = DEFAULT_ROPE,
                  keep: Callable[[Mapping[str, object]], bool] | None = None) -> pd.DataFrame:
    """Every comparison the report states, per task, backbone, dataset and fraction: each method against full
    fine-tuning, and the best method against the runner-up (by mean test score among the cells that learned).
    `chosen`: each cell's chosen trial (sweep.results.table.chosen_trials); `scores`: sweep.results.scores.method_scores; `predictions`:
    {run id: predictions table}. A comparison with a cell that did not learn is not made; the verdict says which.
    `keep`: given each comparison's task, backbone, dataset, fraction, method, reference and kind, whether to
    compute it (the others are left out of the table): a check of a few rows need not bootstrap them all."""
    rows = []
    learned = scores.set_index([*WHERE, "method"])["learned"] if len(scores) else pd.Series(dtype=object)
    for key, group in chosen.groupby(WHERE, sort=True):
        methods = sorted(group["method"].unique())
        pairs = {(m, "full"): "against full fine-tuning" for m in methods if m != "full" and "full" in methods}
        part = scores[(scores[WHERE] == pd.Series(key, index=WHERE)).all(axis=1)] if len(scores) else scores
        usable = part[part["learned"].map(lambda v: v is not False)].sort_values(["oriented", "method"],
                                                                                  ascending=[False, True])
        if len(usable) >= 2:
            best, runner = usable["method"].iloc[0], usable["method"].iloc[1]
            pair = (best, runner) if (best, runner) not in pairs and (runner, best) not in pairs else None
            if pair:
                pairs[pair] = "best against runner-up"
            else:
                found = (best, runner) if (best, runner) in pairs else (runner, best)
                pairs[found] += "; best against runner-up"
        for (method, reference), kind in pairs.items():
            row = {**dict(zip(WHERE, key, strict=True)), "method": method, "reference": reference, "kind": kind}
            if keep is not None and not keep(row):
                continue
            row |= compare_pair(group[group["method"] == method], group[group["method"] == reference], predictions,
                                rope)
            not_learned = [m for m in (reference, method) if learned.get((*key, m)) is False]
            if not_learned:
                row["verdict"] = f"not compared: {' and '.join(not_learned)} did not learn"
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def compare_pair(mine: pd.DataFrame, reference: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                 rope: float = DEFAULT_ROPE) -> dict[str, object]:
    """One comparison of two cells' chosen trials (one row per seed each; positive: `mine` is better): on the test
    images where every seed of both left predictions on the same images and the metric can be recomputed from
    them, else on the per-seed test scores (sweep.results.trust.paired_comparison, and the basis says so)."""
    test_metric = mine["test_metric"].iloc[0]
    metric = test_metric.rsplit("/", 1)[-1]
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    higher = bool(mine["test_higher_is_better"].iloc[0])
    unit = "%" if scale == 100 else ""
    frames = [{int(s): predictions.get(r) for s, r in zip(cell["seed"], cell["run_id"], strict=True)}
              for cell in (mine, reference)]
    why = ""
    if metric in CONFUSION_METRICS and all(f is not None for cell in frames for f in cell.values()):
        try:
            a, b = (CellPredictions.from_frames(cell) for cell in frames)
            out = paired_bootstrap(a, b, metric, scale, rope if scale == 100 else rope / 100, higher_is_better=higher)
            return {"basis": BASIS_IMAGES, "unit": unit, **{k: v for k, v in out.items() if k in COLUMNS}}
        except ValueError as e:  # tested on other images (another split): only the seeds can be paired
            why = str(e)
    sign = 1.0 if higher else -1.0
    paired = mine.set_index("seed")["test_main"].to_frame("mine").join(
        reference.set_index("seed")["test_main"].rename("reference"), how="inner").dropna()
    differences = sign * scale * (paired["mine"] - paired["reference"]).to_numpy(dtype=float)
    out = trust.paired_comparison(differences)
    return {"basis": BASIS_SEEDS + (f" ({why})" if why else ""), "unit": unit, "seeds": out["pairs"],
            "images": math.nan, "mean_diff": out["mean_diff"], "ci_low": out["ci_low"], "ci_high": out["ci_high"],
            "p_better": math.nan, "ahead": f"{int((differences > 0).sum())} of {len(differences)}",
            "sign_p": out["sign_p"], "wilcoxon_p": out["wilcoxon_p"], "verdict": out["verdict"],
            "interval_over": "seeds only: the test images' sampling noise is not in it"}


# -- claims across datasets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """Methods over the datasets of one task, backbone and fraction (only methods that learned on every one)."""

    task: str
    backbone: str
    fraction: float
    scores: pd.DataFrame  # datasets x methods, mean test score oriented so that higher is better
    ranks: pd.Series  # mean rank per method over the datasets, 1 = best, best first
    holm: pd.DataFrame  # methods x methods: Holm-corrected two-sided p of pairwise Wilcoxon tests over datasets
    best: str
    runner_up: str
    ahead: str  # "k of n datasets" the best is ahead of the runner-up on
    wilcoxon_p: float  # best against runner-up over the datasets, uncorrected

    @property
    def smallest_p(self) -> float:
        """The smallest two-sided p a signed-rank or sign test over this many datasets can give: 2/2^n."""
        return 2 / 2 ** len(self.scores)


def across_datasets(scores: pd.DataFrame) -> list[Ranking]:
    """Per task, backbone and fraction with two datasets or more: mean ranks (scipy.stats.rankdata per dataset,
    ties shared), the best method against the runner-up by a Wilcoxon signed-rank test over the datasets, and
    pairwise Wilcoxon tests with Holm's correction (scikit-posthocs; Benavoli et al. 2016 prefer them to the
    Nemenyi test) for the critical-difference diagram. Cells that did not learn are left out, and with them any
    method that lacks a dataset."""
    import scikit_posthocs

    out = []
    usable = scores[scores["learned"].map(lambda v: v is not False)]
    for (task, backbone, fraction), part in usable.groupby(["task", "backbone", "fraction"], sort=True):
        table = part.pivot_table(index="dataset", columns="method", values="oriented", aggfunc="first")
        table = table.dropna(axis=1)
        if len(table) < 2 or table.shape[1] < 2:
            continue
        ranks = pd.DataFrame(stats.rankdata(-table.to_numpy(), axis=1), index=table.index, columns=table.columns)
        mean_ranks = ranks.mean().sort_values(kind="stable")
        best, runner = mean_ranks.index[0], mean_ranks.index[1]
        long = table.reset_index().melt(id_vars="dataset", var_name="method", value_name="score")
        with warnings.catch_warnings():  # zero differences (identical scores) make scipy warn; zsplit keeps them
            warnings.simplefilter("ignore")
            holm = scikit_posthocs.posthoc_wilcoxon(long, val_col="score", group_col="method", p_adjust="holm",
                                                    zero_method="zsplit")
        difference = (table[best] - table[runner]).to_numpy()
        out.append(Ranking(task, backbone, float(fraction), table, mean_ranks, holm, best, runner,
                           f"{int((difference > 0).sum())} of {len(difference)}", trust.wilcoxon(difference)))
    return out
