"""The classification training loop: one trial, top to bottom.

Written as a Ray Train style worker function (`train_loop_per_worker(config)`) against `current_session()`, so
the same code runs in a Tune trial's own process (one worker) or in each worker of a TorchTrainer (DDP).

data -> backbone + PEFT method -> AdamW + warm-up/cosine -> resume from checkpoint -> for each epoch: train,
validate, keep the best-validation weights, checkpoint what was trained, log to MLflow, report to Tune -> after
the last epoch: test metrics of the best-validation weights, in the same final report.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.backbones import build_backbone
from trainables.config import TrialConfig
from trainables.data import Batches, ImageSplit, load_splits
from trainables.methods import load_trainable_state, prepare_model, train_mode, trainable_state_dict
from trainables.metrics import classification_metrics
from trainables.session import current_session
from trainables.tasks import SCORE
from trainables.trial import Diverged, Trial


class ClassificationTrain(BaseModel):
    """The `train:` section of a classification sweep."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    augment: bool = True
    select_metric: Literal["acc", "balanced_acc", "auroc"] = "acc"
    amp: bool = True  # bf16 autocast on GPUs; trainable parameters stay fp32
    checkpoint_every: int = Field(1, ge=1)


@dataclass
class Progress:
    """What a checkpoint carries besides tensors."""

    epoch: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    best_val_loss: float = math.inf


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrialConfig.model_validate(config)
    train = ClassificationTrain.model_validate(cfg.train)
    session = current_session()
    rank, world = session.world_rank, session.world_size
    device = _device(cfg.resources.gpus)
    torch.set_num_threads(max(1, int(cfg.resources.cpus)))
    torch.manual_seed(cfg.seed)

    # Data: decoded and resized once, then indexed in memory.
    data = load_splits(cfg.data, cfg.seed)

    # Backbone with a new head, then the PEFT method decides what trains.
    model, info = build_backbone(cfg.backbone.name, data.num_classes, cfg.backbone.weights,
                                 cfg.data.image_size, **cfg.backbone.kwargs)
    prepared = prepare_model(model, info, cfg.method.name, cfg.method.knobs, cfg.method.bn_mode)
    model, bn_mode = prepared.model.to(device), prepared.bn_mode
    train_batches = Batches(data.train, train.batch_size, info.mean, info.std, device, shuffle=True,
                            augment=train.augment, seed=cfg.seed, rank=rank, world_size=world)
    evaluate = Evaluator(info.mean, info.std, train.eval_batch_size, device, rank, world)
    trained = [p for p in model.parameters() if p.requires_grad]
    net = _ddp(model, device) if world > 1 else model

    # Optimizer and per-step schedule: linear warm-up, then cosine to zero.
    if train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(trained, lr=train.lr, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.SGD(trained, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    steps_per_epoch = len(train_batches)
    total_steps = train.epochs * steps_per_epoch
    warmup_steps = min(int(train.warmup_epochs * steps_per_epoch), total_steps - 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps))

    # Resume: a restarted trial continues after its last checkpoint (same place for a re-suggested trial).
    trial = Trial(config, cfg, session, train.checkpoint_every)
    progress, best_state = Progress(), None
    with trial.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            progress, best_state = load_checkpoint(checkpoint, model, optimizer, schedule)
    if trial.start(_params(cfg, train, info.weight_source, prepared, data.params), _tags(cfg, data), progress.epoch):
        return  # an earlier attempt finished this trial; its results were reported again

    with trial.failures():
        for epoch in range(progress.epoch + 1, train.epochs + 1):
            started = time.perf_counter()
            train_mode(net, bn_mode)
            train_batches.epoch = epoch
            torch.manual_seed(cfg.seed * 10_007 + epoch)  # dropout etc.: the same on resume
            loss_sum, seen = 0.0, 0
            for x, y in train_batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.amp and device.type == "cuda"):
                    loss = F.cross_entropy(net(x), y, label_smoothing=train.label_smoothing)
                if not torch.isfinite(loss):
                    raise Diverged(f"training loss became {loss.item()} at epoch {epoch} (lr={train.lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trained, train.grad_clip)
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
            train_seconds = time.perf_counter() - started

            val = evaluate(model, data.val)
            score = val[train.select_metric]
            # Ties on the selection metric (common on small validation sets) go to the lower validation loss.
            if (score, -val["loss"]) > (progress.best, -progress.best_val_loss):
                progress.best, progress.best_epoch, progress.best_val_loss = score, epoch, val["loss"]
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainable_state_dict(model, bn_mode).items()}
            progress.epoch = epoch

            metrics = {
                "epoch": epoch,
                "train/loss": loss_sum / max(seen, 1),
                **{f"val/{k}": v for k, v in val.items()},
                f"val/best_{train.select_metric}": progress.best,
                "val/best_loss": progress.best_val_loss,
                SCORE: progress.best,
                "best_epoch": progress.best_epoch,
                "lr": schedule.get_last_lr()[0],
                "time/epoch_s": time.perf_counter() - started,
                "time/train_images_per_s": seen * world / max(train_seconds, 1e-9),
                "sys/peak_mem_mb": _peak_memory_mb(device),
            }
            last = epoch == train.epochs
            if last:  # test metrics of the best-validation weights, reported with the last epoch
                load_trainable_state(model, best_state)
                metrics.update({f"test/{k}": v for k, v in evaluate(model, data.test).items()})
            trial.end_epoch(epoch, metrics, last, save=partial(
                save_checkpoint, model=model, bn_mode=bn_mode, optimizer=optimizer, schedule=schedule,
                progress=progress, best_state=best_state))


class Evaluator:
    """Metrics of a model on a split; with several DDP workers each evaluates a shard and all see the total."""

    def __init__(self, mean, std, batch_size: int, device: torch.device, rank: int, world: int) -> None:
        self.mean, self.std, self.batch_size, self.device = mean, std, batch_size, device
        self.rank, self.world = rank, world

    @torch.no_grad()
    def __call__(self, model: nn.Module, split: ImageSplit) -> dict[str, float]:
        was_training = model.training
        model.eval()
        batches = Batches(split, self.batch_size, self.mean, self.std, self.device, rank=self.rank,
                          world_size=self.world, pad=False)
        logits, labels = [], []
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits.append(model(x).float().cpu())
            labels.append(y.cpu())
        model.train(was_training)
        out = (torch.cat(logits).numpy(), torch.cat(labels).numpy())
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, out)
            out = (np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered]))
        return classification_metrics(*out)


def save_checkpoint(directory: Path, model: nn.Module, bn_mode, optimizer, schedule, progress: Progress,
                    best_state: dict[str, torch.Tensor] | None) -> None:
    """Only what was trained (safetensors), the optimizer/schedule state, and the progress counters."""
    save_file({k: v.contiguous() for k, v in trainable_state_dict(model, bn_mode).items()},
              str(directory / "trained.safetensors"))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(directory / "best.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, directory / "optimizer.pt")
    (directory / "progress.json").write_text(json.dumps(asdict(progress)))


def load_checkpoint(directory: Path, model: nn.Module, optimizer, schedule):
    load_trainable_state(model, load_file(str(directory / "trained.safetensors")))
    state = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    best = directory / "best.safetensors"
    best_state = load_file(str(best)) if best.exists() else None
    return Progress(**json.loads((directory / "progress.json").read_text())), best_state


def _params(cfg: TrialConfig, train: ClassificationTrain, weight_source: str, prepared, data_params) -> dict:
    return {
        "task": cfg.task,
        "seed": cfg.seed,
        "dataset": cfg.data.name,
        "data.options": json.dumps(cfg.data.options, sort_keys=True),
        "data.fraction": cfg.data.fraction,
        "data.image_size": cfg.data.image_size,
        "data.fallback_from": cfg.data.fallback_from or "",
        **data_params,
        "backbone": cfg.backbone.name,
        "backbone.weights": weight_source,
        "method": cfg.method.name,
        **{f"method.{k}": v for k, v in prepared.knobs.items()},
        "method.bn_mode": prepared.bn_mode,
        "trainable_params": prepared.trainable_params,
        "total_params": prepared.total_params,
        "trainable_share": f"{prepared.trainable_params / prepared.total_params:.6f}",
        "selection.val": f"val/best_{train.select_metric}",
        "selection.test": f"test/{train.select_metric}",
        "selection.test_higher_is_better": True,
        **{f"train.{k}": v for k, v in train.model_dump().items()},
        **{f"searched.{k}": v for k, v in cfg.searched.items()},
        "resources.num_workers": cfg.resources.num_workers,
        "resources.cpus": cfg.resources.cpus,
        "resources.gpus": cfg.resources.gpus,
        "versions": f"torch {torch.__version__}",
    }


def _tags(cfg: TrialConfig, data) -> dict[str, str]:
    tags = {
        "task": cfg.task,
        "dataset": data.params.get("data.source", cfg.data.name),
        "backbone": cfg.backbone.name,
        "method": cfg.method.name,
        "fraction": str(cfg.data.fraction),
        "seed": str(cfg.seed),
    }
    if cfg.data.fallback_from:
        tags["data_fallback"] = f"synthetic data: {cfg.data.fallback_from} was not found"
    return tags


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _device(gpus: float) -> torch.device:
    if gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
