"""A simulated task for scale tests and benchmarks: no data, no model, a learning curve that is a deterministic
function of the learning rate, the cell and the epoch, and a few milliseconds of "work" per epoch. Everything
else is real: it goes through the sweep's searcher, scheduler, storage, checkpoints and MLflow logging exactly as
a training trial does."""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainables.config import TrialConfig
from trainables.contract import EPOCH, SCORE, VAL_BEST_LOSS
from trainables.session import current_session
from trainables.trial import Trial, run_tags


class SimulatedTrain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    epoch_seconds: float = Field(0.005, ge=0)


def curve(cell: str, lr: float, epoch: int) -> float:
    """Validation accuracy after `epoch` epochs: a per-cell best learning rate (between 1e-4 and 1e-2), a
    bell-shaped dependence on log10(lr) around it, saturating over epochs, plus deterministic jitter."""
    best = -4 + 2 * (zlib.crc32(cell.encode()) % 1000) / 1000
    final = 0.55 + 0.4 * math.exp(-((math.log10(lr) - best) ** 2) / 0.8)
    jitter = (zlib.crc32(f"{cell}/{lr:.6g}/{epoch}".encode()) % 1000) / 1000 - 0.5
    return min(1.0, final * (1 - math.exp(-epoch / 3)) + 0.01 * jitter)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrialConfig.model_validate(config)
    train = SimulatedTrain.model_validate(cfg.train)
    trial = Trial(config, cfg, current_session())
    best, start = -math.inf, 0
    with trial.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            state = json.loads((checkpoint / "state.json").read_text())
            best, start = state["best"], state["epoch"]
    params = {"task": cfg.task, "method": cfg.method.name, "train.lr": train.lr, "train.epochs": train.epochs,
              "selection.val": "val/best_acc", "selection.test": "test/acc",
              **{f"searched.{k}": v for k, v in cfg.searched.items()}, "trainable_params": 1, "total_params": 1}
    tags = run_tags(cfg, {})  # as a training trial's: its dataset tag is the spec's id, as its cell's
    if trial.start(params, tags, start):
        return
    with trial.failures():
        for epoch in range(start + 1, train.epochs + 1):
            time.sleep(train.epoch_seconds)
            acc = curve(cfg.tracking.cell_key, train.lr, epoch)
            best = max(best, acc)
            metrics = {EPOCH: epoch, "train/loss": 1 - acc, "val/acc": acc, "val/best_acc": best,
                       VAL_BEST_LOSS: 1 - best, SCORE: best}
            last = epoch == train.epochs
            if last:
                metrics["test/acc"] = best - 0.01

            def save(directory: Path, epoch=epoch, best=best) -> None:
                (directory / "state.json").write_text(json.dumps({"epoch": epoch, "best": best}))

            trial.end_epoch(epoch, metrics, last, save)
