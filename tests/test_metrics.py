import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score

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
    if classes == 2:
        expected = roc_auc_score(labels, logits[:, 1] - logits[:, 0])
    else:
        expected = roc_auc_score(labels, probs, multi_class="ovr")
    assert m["auroc"] == pytest.approx(expected)


def test_auroc_is_nan_without_both_classes():
    assert np.isnan(binary_auroc(np.array([0.1, 0.2]), np.array([True, True])))
