"""The chosen trials' per-image predictions (trainables.contract.PREDICTIONS_ARTIFACT), read from MLflow once and
kept beside the report, so building it again reads nothing twice. A sweep from before trials logged them has none:
the report then falls back to per-seed comparisons and says so.

The report also writes them in a compact form beside results.parquet (COMPACT: one row per chosen trial and test
image, with its predicted class), small enough to commit with a study, from which every comparison interval of the
report can be recomputed (`from_compact` gives back what `load` gives, the probabilities one-hot)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.store import mlflow_experiment
from trainables.contract import (
    PRED_GROUP,
    PRED_LABEL,
    PRED_PROB_PREFIX,
    PRED_ROW,
    PRED_SPLIT,
    PREDICTIONS_ARTIFACT,
)
from trainables.predictions import probabilities

CACHE = "predictions"  # folder of the report's output: <run id>.parquet per trial read
# Beside results.parquet: the chosen trials' test predictions, under the name each trial's own artifact has.
COMPACT = PREDICTIONS_ARTIFACT
RUN_ID, PREDICTED, CLASSES = "run_id", "predicted", "classes"


def load(uri: str, run_ids: list[str], cache: Path) -> dict[str, pd.DataFrame]:
    """{run id: its predictions} for the runs that logged them (others are left out)."""
    cache.mkdir(parents=True, exist_ok=True)
    # One progress bar per file would fill the launcher's output (it asks while the sweep runs): none.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    found: dict[str, pd.DataFrame] = {}
    client = None
    for run_id in run_ids:
        kept = cache / f"{run_id}.parquet"
        if not kept.exists():
            client = client or mlflow_experiment.client(uri)
            if not any(f.path == PREDICTIONS_ARTIFACT for f in client.list_artifacts(run_id)):
                continue
            with tempfile.TemporaryDirectory(prefix="medpeft-pred-") as directory:
                path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, directory)
                shutil.copyfile(path, kept)
        found[run_id] = pd.read_parquet(kept)
    return found


def compact(found: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per run and test image: the run, the image's manifest row, group and true class, the class the run
    predicted (its most probable) and how many classes it scored. The comparisons need no more (they are on
    confusion-matrix metrics)."""
    parts = []
    for run_id, frame in sorted(found.items()):
        test = frame[frame[PRED_SPLIT] == "test"].sort_values(PRED_ROW)
        probs = probabilities(test)
        parts.append(pd.DataFrame({RUN_ID: run_id, PRED_ROW: test[PRED_ROW].to_numpy(dtype=np.int32),
                                   PRED_GROUP: test[PRED_GROUP].fillna("").astype(str).to_numpy(),
                                   PRED_LABEL: test[PRED_LABEL].to_numpy(dtype=np.int16),
                                   PREDICTED: probs.argmax(1).astype(np.int16),
                                   CLASSES: np.full(len(test), probs.shape[1], dtype=np.int16)}))
    columns = [RUN_ID, PRED_ROW, PRED_GROUP, PRED_LABEL, PREDICTED, CLASSES]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return table.astype({RUN_ID: "category", PRED_GROUP: "category"})


def from_compact(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{run id: its test predictions as PREDICTIONS_ARTIFACT lays them out}, the predicted class at probability 1."""
    out = {}
    for run_id, part in table.groupby(RUN_ID, observed=True, sort=True):
        classes = int(part[CLASSES].iloc[0])
        onehot = np.eye(classes)[part[PREDICTED].to_numpy(dtype=int)]
        out[str(run_id)] = pd.DataFrame({
            PRED_SPLIT: "test", PRED_ROW: part[PRED_ROW].to_numpy(), PRED_GROUP: part[PRED_GROUP].astype(str).to_numpy(),
            PRED_LABEL: part[PRED_LABEL].to_numpy(dtype=int),
            **{f"{PRED_PROB_PREFIX}{c}": onehot[:, c] for c in range(classes)}})
    return out
