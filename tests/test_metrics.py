import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, matthews_corrcoef, roc_auc_score

from trainables.metrics import binary_auroc, classification_metrics


@pytest.mark.parametrize("classes", [2, 5])
def test_metrics_match_scikit_learn(classes):
    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, 300)
    logits = rng.normal(size=(300, classes)) + np.eye(classes)[labels] * 1.5
    logits = np.round(logits, 1)  # ties in the scores
    m = classification_metrics(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["acc"] == pytest.approx((logits.argmax(1) == labels).mean())
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))
    assert m["loss"] == pytest.approx(log_loss(labels, probs), rel=1e-6)
    assert m["f1"] == pytest.approx(f1_score(labels, logits.argmax(1), average="macro"))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, logits.argmax(1)))
    if classes == 2:
        expected = roc_auc_score(labels, logits[:, 1] - logits[:, 0])
    else:
        expected = roc_auc_score(labels, probs, multi_class="ovr")
    assert m["auroc"] == pytest.approx(expected)


def test_auroc_is_nan_without_both_classes_and_counts_ordered_pairs():
    assert np.isnan(binary_auroc(np.array([0.1, 0.2]), np.array([True, True])))
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ordered right; a tie counts half.
    assert binary_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(3 / 4)
    assert binary_auroc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(3.5 / 4)


def test_f1_by_hand_and_a_majority_classifier():
    # 3 classes; true 0,0,0,1,1,2; predicted 0,0,1,1,1,0.
    # class 0: TP 2, FP 1, FN 1 -> 4/6; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 0, FN 1 -> 0.
    labels = np.array([0, 0, 0, 1, 1, 2])
    logits = np.eye(3)[[0, 0, 1, 1, 1, 0]]
    assert classification_metrics(logits, labels)["f1"] == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
    # MCC by Gorodkin's formula: 4 of 6 right, predicted counts (3, 3, 0), true counts (3, 2, 1):
    # (4 * 6 - (9 + 6 + 0)) / sqrt((36 - 18) * (36 - 14)).
    assert classification_metrics(logits, labels)["mcc"] == pytest.approx(9 / np.sqrt(18 * 22))
    # Always the majority class (57 of 78, as BreastMNIST's validation split): accuracy 0.73, but macro F1 is
    # F1 of the majority class / 2 (the other class scores 0) and MCC 0.
    labels = np.array([1] * 57 + [0] * 21)
    majority = classification_metrics(np.tile([0.0, 1.0], (78, 1)), labels)
    assert majority["acc"] == pytest.approx(57 / 78)
    assert majority["f1"] == pytest.approx((2 * 57 / (2 * 57 + 21)) / 2)
    assert majority["mcc"] == 0.0 and majority["balanced_acc"] == pytest.approx(0.5)
