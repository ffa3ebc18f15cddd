"""Checks that keep artefacts out of the answer: did a cell's chosen trial learn at all, had it converged (its
validation score, by the rule the search rounds use), was its learning rate (or another searched knob) at the edge
of the range searched, and is a difference against full fine-tuning larger than the seeds' noise. Pure functions of the trials table (`sweep.results.table.trials_table`), so every verdict can be
recomputed from `results.parquet`.

- The trivial classifier of a split is the best of the classifiers that look at no image: always the majority
  class, random guesses in the class proportions, uniform random guesses; its score is their expected score on
  the split's class counts, on the metric the trials are judged by (AUROC 0.5, MCC 0).
- A cell learned when its chosen trials beat the trivial classifier on validation and on test by more than the
  noise: 1.96 standard errors of the metric on that many images (sqrt(m (1 - m) / n), m the score), or of the mean
  over seeds when the seeds disagree more than that.
- Without per-image predictions (a sweep from before they were logged), PEFT against full fine-tuning is paired by
  seed only (same seed: same data subset and initialisation): the mean of the per-seed differences with a paired
  bootstrap interval over the seeds. With one seed nothing can be told apart, and the verdict says so. The
  comparisons that count the test images are sweep.results.comparisons.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from sweep.plan.grid import range_edge
from trainables.contract import SEARCHED_PREFIX

Z95 = 1.96
MIN_SEEDS_FOR_TESTS = 6  # seed-level tests from here: the first n where 2/2^n, the smallest p n seeds give, < 0.05


def base_metric(key: str) -> str:
    """'val/best_f1' -> 'f1', 'test/acc' -> 'acc'."""
    return key.rsplit("/", 1)[-1].removeprefix("best_")


def trivial_score(counts: list[int] | np.ndarray, metric: str) -> float:
    """The best expected score of a classifier that ignores its input, on a split with these class counts (NaN
    for metrics without one, e.g. a loss or FID)."""
    counts = np.asarray(counts, dtype=float)
    counts = counts[counts > 0]
    if len(counts) == 0:
        return math.nan
    p, k = counts / counts.sum(), len(counts)
    if metric == "acc":
        return float(p.max())  # majority class (random guesses: sum p^2 or 1/k, never more)
    if metric == "balanced_acc":
        return 1.0 / k
    if metric == "auroc":
        return 0.5
    if metric == "mcc":
        return 0.0
    if metric == "f1":
        majority = 2 * p.max() / (1 + p.max()) / k  # F1 of the majority class; the others score 0
        proportional = 1.0 / k  # guessing class c with probability p_c: precision = recall = p_c
        uniform = float(np.mean(2 * p / k / (p + 1 / k)))  # guessing uniformly: precision p_c, recall 1/k
        return float(max(majority, proportional, uniform))
    return math.nan


def sampling_noise(score: float, images: int) -> float:
    """1.96 standard errors of a proportion-like score measured on `images` images."""
    if not images or math.isnan(score):
        return math.nan
    m = min(max(score, 0.0), 1.0)
    return Z95 * math.sqrt(max(m * (1 - m), 1e-4) / images)


def learned(scores: np.ndarray, trivial: float, images: int) -> tuple[bool | None, float]:
    """(whether the mean of `scores` beats `trivial` by more than the noise, the noise). None when there is no
    trivial score to beat (a loss, FID)."""
    scores = np.asarray(scores, dtype=float)
    scores = scores[~np.isnan(scores)]
    if math.isnan(trivial) or len(scores) == 0:
        return None, math.nan
    mean = float(scores.mean())
    noise = sampling_noise(mean, images)
    if len(scores) > 1:
        noise = max(noise, Z95 * float(scores.std(ddof=1)) / math.sqrt(len(scores)))
    return bool(mean - trivial > noise), noise


def verdict(value) -> bool | None:
    """A learned-verdict as True, False or None (no trivial score to beat), whatever pandas stored it as."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def add_trivial(trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial: the trivial classifier's validation and test score on the trial's own metric and splits."""
    trials = trials.copy()
    for split, metric_column in (("val", "val_metric"), ("test", "test_metric")):
        counts = trials.get(f"counts_{split}", pd.Series([""] * len(trials), index=trials.index))
        trials[f"trivial_{split}"] = [
            trivial_score(json.loads(c), base_metric(m)) if isinstance(c, str) and c else math.nan
            for c, m in zip(counts, trials[metric_column], strict=True)]
        trials[f"n_{split}"] = [int(sum(json.loads(c))) if isinstance(c, str) and c else 0 for c in counts]
    return trials


def cell_verdicts(chosen: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of chosen trials (a cell over its seeds): the trivial scores, whether it learned on validation
    and on test, and the noise margins. `chosen` needs add_trivial's columns."""
    rows = []
    for key, group in chosen.groupby(by, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for split, column in (("val", "val_best"), ("test", "test_main")):
            trivial = float(group[f"trivial_{split}"].iloc[0])
            ok, noise = learned(group[column].to_numpy(dtype=float), trivial, int(group[f"n_{split}"].iloc[0]))
            row |= {f"trivial_{split}": trivial, f"learned_{split}": ok, f"noise_{split}": noise}
        both = [row["learned_val"], row["learned_test"]]
        row["learned"] = None if None in both else all(both)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*by, "trivial_val", "learned_val", "noise_val", "trivial_test",
                                        "learned_test", "noise_test", "learned"])
    for column in ("learned_val", "learned_test", "learned"):
        frame[column] = pd.Series([verdict(v) for v in frame[column]], index=frame.index, dtype=object)
    return frame


def at_edge(trials: pd.DataFrame, chosen: pd.DataFrame, column: str = "searched.lr") -> pd.Series:
    """Per chosen trial (indexed by cell_key): 'low' or 'high' when its value of `column` (a searched knob, the
    learning rate by default) is the smallest or largest its cell tried, else '' (sweep.plan.grid.range_edge, the
    check the search rounds make: numeric values, more than one tried)."""
    if column not in trials.columns:
        return pd.Series("", index=chosen["cell_key"], dtype=object)
    tried = trials.groupby("cell_key")[column].agg(lambda v: list(pd.to_numeric(v, errors="coerce").dropna()))
    return pd.Series({cell: range_edge(value, tried.get(cell, []))
                      for cell, value in zip(chosen["cell_key"], pd.to_numeric(chosen[column], errors="coerce"),
                                             strict=True)}, dtype=object)


def knobs_at_edge(trials: pd.DataFrame, chosen: pd.DataFrame) -> pd.Series:
    """Per chosen trial (indexed by cell_key): its searched knobs other than the learning rate that sit at an edge
    of what its cell tried, e.g. 'weight_decay high, knobs.r low' ('' for none). Reported, never widened (only the
    learning rate's range is: sweep/tune/rounds.py)."""
    columns = sorted(c for c in trials.columns if c.startswith(SEARCHED_PREFIX) and c != "searched.lr")
    edges = {column: at_edge(trials, chosen, column) for column in columns}
    return pd.Series({cell: ", ".join(f"{c.removeprefix(SEARCHED_PREFIX)} {e[cell]}" for c, e in edges.items()
                                      if e.get(cell, ""))
                      for cell in chosen["cell_key"]}, dtype=object)



# ---------------------------------------------------------------------------------------------------------------
# Paired comparisons across seeds


def paired_bootstrap_ci(differences: np.ndarray, level: float = 0.95, resamples: int = 4000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean paired difference, resampling the pairs (seeds) together
    (scipy.stats.bootstrap); NaN below two pairs."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return (math.nan, math.nan)
    if np.all(d == d[0]):  # every resample has the same mean (scipy would warn of a degenerate distribution)
        return float(d[0]), float(d[0])
    result = stats.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


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


def paired_comparison(differences: np.ndarray) -> dict[str, float | int | str]:
    """Mean difference (positive: better than the reference), paired bootstrap 95% interval over the seeds, sign and
    Wilcoxon p-values (from MIN_SEEDS_FOR_TESTS seeds on), and the verdict. The fallback
    for a sweep without per-image predictions: the seeds' spread misses the test set's sampling noise, and with
    three seeds the interval is their [min, max] (75% coverage, not 95%)."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    out: dict[str, float | int | str] = {"pairs": n, "mean_diff": float(d.mean()) if n else math.nan}
    low, high = paired_bootstrap_ci(d)
    out |= {"ci_low": low, "ci_high": high, **seed_tests(d)}
    if n < 2:
        out["verdict"] = "cannot tell (one seed)"
    elif low > 0:
        out["verdict"] = "better"
    elif high < 0:
        out["verdict"] = "worse"
    else:
        out["verdict"] = "no clear difference"
    return out
