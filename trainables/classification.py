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
import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.backbones import build_backbone
from trainables.checkpoints import load_training_state, save_training_state
from trainables.config import TrialConfig
from trainables.contract import (
    EPOCH,
    PEAK_MEM,
    SCORE,
    TRAIN_LOSS,
    VAL_BEST_LOSS,
    VAL_IMAGES,
    Selection,
    test_metric,
    val_best,
)
from trainables.data import Batches, ImageSplit, load_splits
from trainables.data.loader import TRAIN_MIN_LAST, passes_per_epoch
from trainables.devices import ddp, device_for, peak_memory_mb
from trainables.methods import (
    load_trainable_state,
    param_groups,
    prepare_model,
    train_mode,
    trainable_state_dict,
)
from trainables.metrics import classification_metrics
from trainables.predictions import predictions_frame, softmax
from trainables.session import current_session
from trainables.trial import Diverged, Trial, run_params, run_tags, warmup_cosine

# Torch's global generator (dropout, stochastic depth, ...) is reseeded each epoch with
# `seed * EPOCH_SEED_STRIDE + epoch`, so a resumed trial draws what an uninterrupted one would. The stride is a
# prime far above any epoch count, so no two (seed, epoch) pairs share a seed. (The batches' shuffling and
# augmentation have their own generators, seeded in trainables/data/loader.py.)
EPOCH_SEED_STRIDE = 10_007


class ClassificationTrain(BaseModel):
    """The `train:` section of a classification sweep."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)  # the effective batch of one optimizer step (per worker)
    # Gradient accumulation: the batch is run in micro-batches of this size (None: all at once; "auto": all at
    # once, halved each time the GPU runs out of memory). The size used is logged every epoch.
    micro_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Cross-entropy weights per class: "balanced" weighs each class by n / (K n_c) of the training images, so
    # every class counts as much in the loss; "auto" does so when the largest class has more than 1.5 times the
    # images of the smallest (BreastMNIST: 2.7), none otherwise. Without it a model can sit at the majority
    # class for epochs while its ranking (AUROC) is already good. The weights used are in the run's params.
    class_weights: Literal["auto", "balanced", "none"] = "auto"
    grad_clip: float | None = Field(1.0, gt=0.0)
    augment: bool = True
    select_metric: Literal["f1", "acc", "balanced_acc", "auroc", "mcc"] = "f1"  # macro F1: the study's metric
    amp: bool = True  # bf16 autocast on GPUs; trainable parameters stay fp32
    checkpoint_every: int = Field(1, ge=1)
    # An epoch whose training set gives fewer optimizer steps than this cycles the training set again, reshuffled
    # and re-augmented (whole passes), until it has at least this many: passes = ceil(min_steps_per_epoch /
    # batches per pass). For tiny training sets (a 10% fraction of 300 images is 1-2 batches), where a few epochs
    # would otherwise be a handful of steps and no learning rate converges. 1: one pass per epoch. The passes used
    # are in the run's params (train.passes_per_epoch); warm-up and cosine count every pass's steps.
    min_steps_per_epoch: int = Field(1, ge=1)


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
    device = device_for(cfg.resources.gpus)
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
                            augment=train.augment, seed=cfg.seed, rank=rank, world_size=world,
                            min_last=TRAIN_MIN_LAST)
    evaluate = Evaluator(info.mean, info.std, train.eval_batch_size, device, rank, world, amp=train.amp)
    trained = [p for p in model.parameters() if p.requires_grad]
    weights = class_weights(data.train.labels.numpy(), data.num_classes, train.class_weights)
    loss_weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    net = ddp(model, device) if world > 1 else model

    # Optimizer (a method may give some parameters their own learning rate) and per-step warm-up + cosine.
    groups = param_groups(model, train.lr, train.weight_decay)
    if train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups)
    else:
        optimizer = torch.optim.SGD(groups, momentum=train.momentum)
    passes = passes_per_epoch(len(train_batches), train.min_steps_per_epoch)
    steps_per_epoch = passes * len(train_batches)
    schedule = warmup_cosine(optimizer, int(train.warmup_epochs * steps_per_epoch), train.epochs * steps_per_epoch)

    # Resume: a restarted trial continues after its last checkpoint (same place for a re-suggested trial).
    trial = Trial(config, cfg, session, train.checkpoint_every)
    progress, best_state = Progress(), None
    with trial.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            progress, best_state = load_training_state(checkpoint, model, optimizer, schedule, Progress)
    selection = Selection(val_best(train.select_metric), test_metric(train.select_metric))
    params = run_params(cfg, train, prepared, data.params, info.weight_source, selection,
                        **{"train.class_weights_used": json.dumps([round(w, 4) for w in weights]) if weights else "none",
                           "train.passes_per_epoch": passes})
    if not trial.start(params, run_tags(cfg, data.params), progress.epoch).trains:
        return  # an earlier attempt finished this trial; its results were reported again

    micro = train.batch_size if train.micro_batch_size in (None, "auto") else train.micro_batch_size
    with trial.failures():
        for epoch in range(progress.epoch + 1, train.epochs + 1):
            started = time.perf_counter()
            train_mode(net, bn_mode)
            torch.manual_seed(cfg.seed * EPOCH_SEED_STRIDE + epoch)  # dropout etc.: the same on resume
            loss_sum, seen = 0.0, 0
            for p in range(passes):
                # Passes are numbered across epochs, so each has its own shuffle and augmentation, fixed by (seed,
                # epoch, pass) alone (a resumed trial sees what an uninterrupted one would); one pass an epoch
                # numbers them as the epochs.
                train_batches.epoch = (epoch - 1) * passes + p + 1
                for x, y in train_batches:
                    optimizer.zero_grad(set_to_none=True)
                    loss, micro = accumulate(net, x, y, micro, train, device, loss_weights)
                    if not math.isfinite(loss):
                        raise Diverged(f"training loss became {loss} at epoch {epoch} (lr={train.lr:g})")
                    if train.grad_clip:
                        torch.nn.utils.clip_grad_norm_(trained, train.grad_clip)
                    optimizer.step()
                    schedule.step()
                    loss_sum += loss * len(y)
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
                EPOCH: epoch,
                TRAIN_LOSS: loss_sum / max(seen, 1),
                **{f"val/{k}": v for k, v in val.items()},
                val_best(train.select_metric): progress.best,
                VAL_BEST_LOSS: progress.best_val_loss,
                SCORE: progress.best,
                VAL_IMAGES: len(data.val),
                "best_epoch": progress.best_epoch,
                "lr": schedule.get_last_lr()[0],
                "train/micro_batch_size": min(micro, train.batch_size),
                "train/accumulation_steps": math.ceil(train.batch_size / micro),
                "time/epoch_s": time.perf_counter() - started,
                "time/train_images_per_s": seen * world / max(train_seconds, 1e-9),
                PEAK_MEM: peak_memory_mb(device),
            }
            last = epoch == train.epochs
            if last:  # test metrics of the best-validation weights, reported with the last epoch
                load_trainable_state(model, best_state)
                metrics.update({test_metric(k): v for k, v in log_predictions(trial, evaluate, model, data).items()})
            trial.end_epoch(epoch, metrics, last, save=partial(
                save_training_state, model=model, bn_mode=bn_mode, optimizer=optimizer, schedule=schedule,
                progress=progress, best_state=best_state))


def log_predictions(trial: Trial, evaluate: Evaluator, model: nn.Module, data) -> dict[str, float]:
    """Predict the validation and test splits with the model as it is (the best-validation weights), log both as
    the trial's predictions artifact, and return the test metrics, computed from the same logits."""
    frames, test = [], {}
    for name, split in (("val", data.val), ("test", data.test)):
        logits, labels = evaluate.predict(model, split)
        frames.append(predictions_frame(name, split.rows, labels, softmax(logits), split.groups))
        if name == "test":
            test = classification_metrics(logits, labels)
    trial.log_predictions(pd.concat(frames, ignore_index=True))
    return test


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> list[float] | None:
    """Balanced cross-entropy weights n / (K n_c) from the training labels, or None (see `class_weights`)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    present = counts[counts > 0]
    if mode == "none" or (mode == "auto" and present.max() <= 1.5 * present.min()):
        return None
    return [float(counts.sum() / (num_classes * c)) if c else 0.0 for c in counts]


def accumulate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int, train: ClassificationTrain,
               device: torch.device, weights: torch.Tensor | None = None) -> tuple[float, int]:
    """Forward and backward of one batch in micro-batches of `micro`, each loss weighted by its share of the batch,
    so the gradients are those of the whole batch. With micro_batch_size "auto" a CUDA out-of-memory error halves
    the micro-batch and runs the batch again. Returns (mean loss, micro-batch size used)."""
    while True:
        try:
            total = 0.0
            # Near-equal chunks of at most `micro` (never a last chunk of one image: BatchNorm needs two).
            chunks = math.ceil(len(y) / micro)
            for xs, ys in zip(x.tensor_split(chunks), y.tensor_split(chunks), strict=True):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.amp and device.type == "cuda"):
                    logits = net(xs)
                    loss = F.cross_entropy(logits, ys, weight=weights, label_smoothing=train.label_smoothing,
                                           reduction="sum") / _normaliser(y, weights)
                loss.backward()
                total += loss.item()
            return total, micro
        except torch.OutOfMemoryError:
            if train.micro_batch_size != "auto" or micro == 1:
                raise
            for param in net.parameters():
                param.grad = None
            torch.cuda.empty_cache()
            micro = max(1, micro // 2)


def _normaliser(y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | int:
    """What the whole batch's summed loss is divided by: its size, or its total class weight (as cross_entropy's
    weighted mean does), so micro-batches add up to the batch's mean loss."""
    return len(y) if weights is None else weights[y].sum()


class Evaluator:
    """Metrics of a model on a split; with several DDP workers each evaluates a shard and all see the total."""

    def __init__(self, mean, std, batch_size: int, device: torch.device, rank: int, world: int,
                 amp: bool = True) -> None:
        self.mean, self.std, self.batch_size, self.device = mean, std, batch_size, device
        self.rank, self.world = rank, world
        self.amp = amp and device.type == "cuda"  # bf16 autocast as in training (train.amp), on GPUs only

    def __call__(self, model: nn.Module, split: ImageSplit) -> dict[str, float]:
        return classification_metrics(*self.predict(model, split))

    @torch.no_grad()
    def predict(self, model: nn.Module, split: ImageSplit) -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of every image of the split, in the split's order (whatever shards DDP gave)."""
        was_training = model.training
        model.eval()
        batches = Batches(split, self.batch_size, self.mean, self.std, self.device, rank=self.rank,
                          world_size=self.world, pad=False)
        logits, labels = [], []
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits.append(model(x).float().cpu())
            labels.append(y.cpu())
        model.train(was_training)
        out = (torch.cat(logits).numpy(), torch.cat(labels).numpy(), batches.indices().numpy())
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, out)
            out = tuple(np.concatenate([g[i] for g in gathered]) for i in range(3))
        order = np.argsort(out[2], kind="stable")  # each worker's shard back into the split's order
        return out[0][order], out[1][order]
