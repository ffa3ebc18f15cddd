"""The chosen trials' per-image predictions (trainables.contract.PREDICTIONS_ARTIFACT), read from MLflow once and
kept beside the report, so building it again reads nothing twice. A sweep from before trials logged them has none:
the report then falls back to per-seed comparisons and says so."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from sweep.store import mlflow_experiment
from trainables.contract import PREDICTIONS_ARTIFACT

CACHE = "predictions"  # folder of the report's output: <run id>.parquet per trial read


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
