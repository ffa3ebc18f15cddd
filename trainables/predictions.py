"""A trial's per-image predictions as the table the contract names (trainables.contract.PREDICTIONS_ARTIFACT):
one row per image of a split, so the report can recompute any metric and resample the test images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainables.contract import PRED_GROUP, PRED_LABEL, PRED_PROB_PREFIX, PRED_ROW, PRED_SPLIT


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row's maximum, so large logits do not overflow)."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def predictions_frame(split: str, rows: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                      groups: Sequence[str] | np.ndarray | None = None) -> pd.DataFrame:
    """One split's predictions: manifest row, group ("" without one), true label and every class's probability."""
    n = len(rows)
    if not (len(labels) == len(probs) == n):
        raise ValueError(f"{split}: {n} rows, {len(labels)} labels and {len(probs)} probability rows differ")
    frame = pd.DataFrame({
        PRED_SPLIT: np.full(n, split),
        PRED_ROW: np.asarray(rows, dtype=np.int64),
        PRED_GROUP: np.asarray(groups, dtype=str) if groups is not None else np.full(n, ""),
        PRED_LABEL: np.asarray(labels, dtype=np.int64),
    })
    probs = np.asarray(probs, dtype=np.float64)
    return frame.assign(**{f"{PRED_PROB_PREFIX}{c}": probs[:, c] for c in range(probs.shape[1])})


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    """The (images, classes) probability matrix of a predictions table, classes in index order."""
    columns = sorted((c for c in frame.columns if c.startswith(PRED_PROB_PREFIX)),
                     key=lambda c: int(c.removeprefix(PRED_PROB_PREFIX)))
    return frame[columns].to_numpy(dtype=np.float64)
