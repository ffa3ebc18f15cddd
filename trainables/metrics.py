"""Classification metrics from logits and labels, by scikit-learn's definitions."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, f1_score, matthews_corrcoef, roc_auc_score


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """f1 (macro: the mean over classes of each class's F1, the study's metric), acc (top-1), balanced_acc (mean
    per-class recall), auroc (binary, or macro one-vs-rest), mcc (Matthews, multi-class), loss (CE).

    Accuracy alone hides a classifier that always answers the majority class (BreastMNIST: 73% that way); macro F1,
    balanced accuracy and MCC do not, and AUROC shows whether the scores rank at all."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    with warnings.catch_warnings():
        # A split where some class is never predicted (or never present) is expected early in training: its F1
        # counts 0 (zero_division=0) and balanced accuracy averages over the classes present, silently.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        f1 = float(f1_score(labels, pred, average="macro", zero_division=0))
        balanced = float(balanced_accuracy_score(labels, pred))
    if num_classes == 2:
        # The logit margin ranks like p(class 1) but without softmax rounding splitting or merging ties.
        auroc = binary_auroc(logits[:, 1] - logits[:, 0], labels == 1)
    else:
        # One-vs-rest per class, averaged over the classes that have positives and negatives in the split
        # (scikit-learn's multi_class="ovr" refuses a split that lacks a class altogether).
        per_class = [binary_auroc(log_probs[:, c], labels == c) for c in range(num_classes)]
        valid = [a for a in per_class if not np.isnan(a)]
        auroc = float(np.mean(valid)) if valid else float("nan")
    return {
        "f1": f1,
        "acc": float((pred == labels).mean()),
        "balanced_acc": balanced,
        "auroc": auroc,
        "mcc": float(matthews_corrcoef(labels, pred)),
        # Cross-entropy from the log-softmax of the logits: exact where log_loss would clip probabilities.
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
    }


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half); NaN if one class is absent."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))
