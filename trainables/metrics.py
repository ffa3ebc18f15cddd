"""Classification metrics from logits and labels (numpy, no extra dependency)."""

from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """f1 (macro: the mean over classes of each class's F1, the study's metric), acc (top-1), balanced_acc (mean
    per-class recall), auroc (binary, or macro one-vs-rest), mcc (Matthews, multi-class), loss (CE).

    Accuracy alone hides a classifier that always answers the majority class (BreastMNIST: 73% that way); macro F1,
    balanced accuracy and MCC do not, and AUROC shows whether the scores rank at all."""
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    probs = np.exp(log_probs)
    recalls = [float((pred[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()]
    if num_classes == 2:
        # The logit margin ranks like p(class 1) but without softmax rounding splitting or merging ties.
        auroc = binary_auroc(logits[:, 1] - logits[:, 0], labels == 1)
    else:
        per_class = [binary_auroc(probs[:, c], labels == c) for c in range(num_classes)]
        valid = [a for a in per_class if not np.isnan(a)]
        auroc = float(np.mean(valid)) if valid else float("nan")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return {
        "f1": macro_f1(confusion),
        "acc": float((pred == labels).mean()),
        "balanced_acc": float(np.mean(recalls)),
        "auroc": auroc,
        "mcc": matthews(confusion),
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
    }


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, ties counted half; NaN if one class
    is absent."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_f1(confusion: np.ndarray) -> float:
    """Mean over classes of 2 TP / (2 TP + FP + FN), from a confusion matrix (rows: true, columns: predicted).
    A class that is neither in the labels nor in the predictions has no F1 and is left out; one that is in
    either scores 0 when it is never predicted right."""
    tp = np.diag(confusion).astype(float)
    denominator = confusion.sum(0) + confusion.sum(1)  # 2 TP + FP + FN
    present = denominator > 0
    return float(np.mean(2 * tp[present] / denominator[present])) if present.any() else float("nan")


def matthews(confusion: np.ndarray) -> float:
    """Matthews correlation coefficient for K classes (Gorodkin 2004); 0 when a classifier predicts one class."""
    c = confusion.astype(float)
    samples, correct = c.sum(), np.trace(c)
    predicted, true = c.sum(0), c.sum(1)
    denominator = np.sqrt(samples**2 - predicted @ predicted) * np.sqrt(samples**2 - true @ true)
    return float((correct * samples - predicted @ true) / denominator) if denominator > 0 else 0.0
