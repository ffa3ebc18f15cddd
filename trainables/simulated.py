"""A simulated task for scale tests and benchmarks: no data, no model, a learning curve that is a deterministic
function of the learning rate, the cell and the epoch, and a few milliseconds of "work" per epoch. Everything
else is real: it goes through the sweep's searcher, scheduler, storage, checkpoints and MLflow logging exactly as
a training trial does.

At its last epoch it also leaves per-image predictions (trainables.contract.PREDICTIONS_ARTIFACT) on simulated
validation and test splits: the same images for every cell of a dataset (labels, patient groups of 2 to 5 images,
how hard each image is), a trial's correct images chosen so that its accuracy is its simulated score. So the
report's statistics over test images (and the seeds added where they are undecided) can be exercised cheaply.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from trainables.config import TrialConfig
from trainables.contract import (
    EPOCH,
    EPOCHS_PARAM,
    PRED_LABEL,
    SCORE,
    SEARCHED_PREFIX,
    SELECTION_TEST_PARAM,
    SELECTION_VAL_PARAM,
    TEST_ACC,
    TOTAL_PARAMS_PARAM,
    TRAIN_LOSS,
    TRAIN_PREFIX,
    TRAINABLE_PARAMS_PARAM,
    VAL_BEST_ACC,
    VAL_BEST_LOSS,
    test_metric,
)
from trainables.metrics import classification_metrics
from trainables.predictions import predictions_frame, probabilities
from trainables.session import current_session
from trainables.trial import Trial, run_tags


class SimulatedTrain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    epoch_seconds: float = Field(0.005, ge=0)
    val_images: int = Field(100, ge=10)  # images of the simulated validation and test splits
    test_images: int = Field(200, ge=10)
    # Added to a method's simulated accuracy (e.g. {"lora": 0.05}): a known difference between methods, for
    # rehearsing the report's comparisons.
    method_effect: dict[str, float] = Field(default_factory=dict)
    # How much a trial's set of correct images varies around the dataset's shared order of difficulty (0: every
    # trial gets the easiest images right; larger: seeds and methods disagree more on which images they get right).
    image_noise: float = Field(0.3, ge=0)


def curve(cell: str, lr: float, epoch: int) -> float:
    """Validation accuracy after `epoch` epochs: a per-cell best learning rate (between 1e-4 and 1e-2), a
    bell-shaped dependence on log10(lr) around it, saturating over epochs, plus deterministic jitter."""
    best = -4 + 2 * (zlib.crc32(cell.encode()) % 1000) / 1000
    final = 0.55 + 0.4 * math.exp(-((math.log10(lr) - best) ** 2) / 0.8)
    jitter = (zlib.crc32(f"{cell}/{lr:.6g}/{epoch}".encode()) % 1000) / 1000 - 0.5
    return min(1.0, final * (1 - math.exp(-epoch / 3)) + 0.01 * jitter)


# Seeds of the simulated splits (per dataset) and of a trial's image noise (per trial): distinct primes.
SPLIT_SEED, TRIAL_SEED = 7_919, 104_729


def simulated_split(dataset: str, split: str, images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, groups, difficulty) of a simulated split: two classes (about 35% positive), patient groups of 2 to
    5 consecutive images sharing a label, and a per-image difficulty in [0, 1). A function of the dataset's name,
    so every cell of a dataset is scored on the same images."""
    rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(f"{dataset}/{split}".encode())])
    sizes = rng.integers(2, 6, size=images)
    groups = np.repeat(np.arange(images), sizes)[:images]
    labels = (rng.random(images) < 0.35).astype(np.int64)[groups]  # one label per patient
    difficulty = rng.random(images)
    return labels, np.array([f"p{g}" for g in groups]), difficulty


def simulated_predictions(dataset: str, split: str, images: int, accuracy: float, trial: str,
                          noise: float) -> pd.DataFrame:
    """A trial's predictions on a simulated split: the round(accuracy * images) images that are easiest for it
    (the dataset's difficulty plus this trial's noise) are right, with a probability of their true class above 0.5,
    the others wrong, below it."""
    labels, groups, difficulty = simulated_split(dataset, split, images)
    rng = np.random.default_rng([TRIAL_SEED, zlib.crc32(trial.encode())])
    right = np.zeros(images, dtype=bool)
    right[np.argsort(difficulty + noise * rng.standard_normal(images))[: round(min(max(accuracy, 0), 1) * images)]] = True
    confidence = 0.5 + 0.49 * rng.random(images)  # of the predicted class
    p_true = np.where(right, confidence, 1 - confidence)
    p_one = np.where(labels == 1, p_true, 1 - p_true)
    return predictions_frame(split, np.arange(images), labels, np.column_stack([1 - p_one, p_one]), groups)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrialConfig.model_validate(config)
    train = SimulatedTrain.model_validate(cfg.train)
    trial = Trial(config, cfg, current_session())
    best, start = -math.inf, 0
    with trial.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            state = json.loads((checkpoint / "state.json").read_text())
            best, start = state["best"], state["epoch"]
    params = {"task": cfg.task, "method": cfg.method.name, TRAIN_PREFIX + "lr": train.lr, EPOCHS_PARAM: train.epochs,
              SELECTION_VAL_PARAM: VAL_BEST_ACC, SELECTION_TEST_PARAM: TEST_ACC,
              **{SEARCHED_PREFIX + k: v for k, v in cfg.searched.items()}, TRAINABLE_PARAMS_PARAM: 1,
              TOTAL_PARAMS_PARAM: 1}
    tags = run_tags(cfg, {})  # as a training trial's: its dataset tag is the spec's id, as its cell's
    if not trial.start(params, tags, start).trains:
        return  # an earlier attempt finished this trial; its results were reported again
    with trial.failures():
        for epoch in range(start + 1, train.epochs + 1):
            time.sleep(train.epoch_seconds)
            acc = min(1.0, curve(cfg.tracking.cell_key, train.lr, epoch) + train.method_effect.get(cfg.method.name, 0.0))
            best = max(best, acc)
            metrics = {EPOCH: epoch, TRAIN_LOSS: 1 - acc, "val/acc": acc, VAL_BEST_ACC: best,
                       VAL_BEST_LOSS: 1 - best, SCORE: best}
            last = epoch == train.epochs
            if last:
                metrics.update(log_predictions(trial, cfg, train, best))

            def save(directory: Path, epoch=epoch, best=best) -> None:
                (directory / "state.json").write_text(json.dumps({"epoch": epoch, "best": best}))

            trial.end_epoch(epoch, metrics, last, save)


def log_predictions(trial: Trial, cfg: TrialConfig, train: SimulatedTrain, best: float) -> dict[str, float]:
    """Log the simulated predictions (validation at the best validation accuracy, test a point below it) and return
    the test metrics recomputed from them, so the logged test/acc is what the artifact gives."""
    dataset, key = cfg.data.id or cfg.data.name, f"{cfg.tracking.trial_key}/lr={train.lr:.6g}"
    val = simulated_predictions(dataset, "val", train.val_images, best, key, train.image_noise)
    test = simulated_predictions(dataset, "test", train.test_images, best - 0.01, key, train.image_noise)
    trial.log_predictions(pd.concat([val, test], ignore_index=True))
    logits = np.log(probabilities(test))
    return {test_metric(k): v for k, v in classification_metrics(logits, test[PRED_LABEL].to_numpy()).items()}
