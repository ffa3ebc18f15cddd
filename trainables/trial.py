"""What every task's training loop does around its epochs, written once: the trial's MLflow run (found again by
its key), whether this attempt trains at all (`Trial.start`'s `Start`), the per-epoch log/checkpoint/report,
replaying an attempt that already finished, and ending as failed with the reason when the loss diverges or the code
raises. What a checkpoint holds and where it is stored: trainables.checkpoints."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from trainables.checkpoints import CheckpointStore, read_reports, write_report
from trainables.config import TrialConfig
from trainables.contract import (
    BN_MODE_PARAM,
    CELL_FIELD_TAGS,
    CPUS_PARAM,
    DATA_FALLBACK_TAG,
    DATA_SOURCE_PARAM,
    EPOCH,
    FAILED,
    FAILURE_REASON,
    GPUS_PARAM,
    METHOD_PREFIX,
    NODE_TAG,
    PREDICTIONS_ARTIFACT,
    REPLAYED,
    REPLAYED_STOPPED_EARLY,
    RESUMED_FROM_TAG,
    RUN_ID,
    SCORE,
    SEARCHED_PREFIX,
    SELECTION_TEST_HIGHER_PARAM,
    SELECTION_TEST_PARAM,
    SELECTION_VAL_PARAM,
    TOTAL_PARAMS_PARAM,
    TRAIN_PREFIX,
    TRAINABLE_PARAMS_PARAM,
    TRAINABLE_SHARE_PARAM,
    WEIGHTS_PARAM,
    WORKERS_PARAM,
    NodeDraining,
    Selection,
    Status,
)
from trainables.mlflow_run import DIVERGED, TrialRun, config_hash, open_trial_run
from trainables.session import Session


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """Per-step learning-rate schedule: linear warm-up, then cosine to zero."""
    import math

    import torch

    warmup_steps = min(warmup_steps, total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_params(cfg: TrialConfig, train, prepared, data_params: dict[str, str], weight_source: str,
               selection: Selection, **extra: Any) -> dict[str, Any]:
    """A trial run's MLflow params, the same keys for every task: what was trained on what, how, and chosen how."""
    import torch

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
        WEIGHTS_PARAM: weight_source,
        "method": cfg.method.name,
        **{METHOD_PREFIX + k: v for k, v in prepared.knobs.items()},
        BN_MODE_PARAM: prepared.bn_mode,
        TRAINABLE_PARAMS_PARAM: prepared.trainable_params,
        TOTAL_PARAMS_PARAM: prepared.total_params,
        TRAINABLE_SHARE_PARAM: f"{prepared.trainable_params / prepared.total_params:.6f}",
        SELECTION_VAL_PARAM: selection.val,
        SELECTION_TEST_PARAM: selection.test,
        SELECTION_TEST_HIGHER_PARAM: selection.test_higher_is_better,
        **{TRAIN_PREFIX + k: v for k, v in train.model_dump().items()},
        **{SEARCHED_PREFIX + k: v for k, v in cfg.searched.items()},
        WORKERS_PARAM: cfg.resources.num_workers,
        CPUS_PARAM: cfg.resources.cpus,
        GPUS_PARAM: cfg.resources.gpus,
        "versions": f"torch {torch.__version__}",
        **extra,
    }


def run_tags(cfg: TrialConfig, data_params: dict[str, str]) -> dict[str, str]:
    """The tags reports group by. `dataset` is the spec's id for it (two csv datasets stay apart), or what was
    really used when the sweep fell back to synthetic data."""
    dataset = data_params.get(DATA_SOURCE_PARAM, cfg.data.name) if cfg.data.fallback_from else (cfg.data.id or cfg.data.name)
    fields = (cfg.task, dataset, cfg.backbone.key, cfg.method.key, str(cfg.data.fraction), str(cfg.seed))
    tags = dict(zip(CELL_FIELD_TAGS, fields, strict=True))
    if cfg.data.fallback_from:
        tags[DATA_FALLBACK_TAG] = f"synthetic data: {cfg.data.fallback_from} was not found"
    return tags


def node_draining() -> bool:
    """Is this process's Ray node being drained? (Ray has no public API for it: the GCS's list of draining nodes,
    the one the autoscaler fills on a preemption notice.)"""
    try:
        import ray
        from ray._private.state import state

        return ray.is_initialized() and ray.get_runtime_context().get_node_id() in state.get_draining_nodes()
    except Exception:  # no Ray, or a Ray without drains
        return False


def node_id() -> str:
    """The Ray node this process runs on, or "local" outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # no Ray at all, or a context without a node
        return "local"


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the trial ends as failed (a result, not a crash)."""


class Start(Enum):
    """What `Trial.start` found: whether this attempt trains, and if not, why (its reports were said again)."""

    TRAIN = "train"  # a fresh trial, or one resuming from a checkpoint: the loop trains its remaining epochs
    REPLAYED = "replayed"  # an earlier attempt ended (finished, stopped early or diverged): replayed from MLflow
    FINAL_FROM_CHECKPOINT = "final_from_checkpoint"  # an earlier attempt checkpointed its last epoch, and no run
    # records the end (tracking off, or the record was lost): the final report, made again from the checkpoint

    @property
    def trains(self) -> bool:
        return self is Start.TRAIN

    def __bool__(self) -> bool:
        # `if trial.start(...)` meant "do not train" when start returned a bool; every member would now be true,
        # and such a loop would never train. Ask `.trains`.
        raise TypeError("Trial.start's result has no truth value: test its .trains")


class Trial:
    def __init__(self, config: dict[str, Any], cfg: TrialConfig, session: Session, checkpoint_every: int = 1):
        self.cfg, self.session, self.every = cfg, session, checkpoint_every
        self.digest = config_hash(config)
        self.store = (CheckpointStore(f"{cfg.storage}/checkpoints", cfg.tracking.trial_key, self.digest)
                      if cfg.storage else None)
        self.run: TrialRun | None = None
        self.epoch = 0  # the last epoch completed (restored or trained)
        self.final_report: dict[str, Any] | None = None  # the last epoch's report, when restored from its checkpoint
        self.resumed_report: dict[str, Any] | None = None  # the report of the epoch the checkpoint resumed holds
        self.finished = False  # this attempt recorded its run as finished

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """A local copy of this trial's newest checkpoint, or None for a fresh start."""
        if self.store is None:
            yield None
            return
        with self.store.latest() as checkpoint:
            if checkpoint is not None:
                self.resumed_report, self.final_report = read_reports(checkpoint)
            yield checkpoint

    def start(self, params: dict[str, Any], tags: dict[str, str], resumed_epoch: int) -> Start:
        """Open the MLflow run and say whether the loop trains (`Start.TRAIN`): not when an earlier attempt of this
        exact trial already ended (its reports are replayed from MLflow) or checkpointed its last epoch (its final
        report is made again from the checkpoint)."""
        self.epoch = resumed_epoch
        self.run = open_trial_run(self.cfg.tracking, self.session.world_rank, params, tags, self.digest,
                                  resuming=resumed_epoch > 0)
        if self.run.ended:
            self.replay()
            return Start.REPLAYED
        if self.final_report is not None:
            # An earlier attempt checkpointed its last epoch, but no run records the end (tracking off, or the
            # record was lost). Nothing is left to train, and a trial that ends without a report would fail the
            # whole Tune experiment: the final report is made again from the checkpoint.
            self.run.log_metrics(self.final_report, step=resumed_epoch)
            self.run.finish(Status.FINISHED)
            self._report({**self.final_report, REPLAYED: 1})
            return Start.FINAL_FROM_CHECKPOINT
        # Where this attempt runs (the last attempt's node, when a trial was moved after losing its node).
        self.run.set_tags({NODE_TAG: node_id(), **({RESUMED_FROM_TAG: str(resumed_epoch)} if resumed_epoch else {})})
        if resumed_epoch and self.resumed_report is not None:
            # The epoch this attempt resumes from was checkpointed before it was reported, and the driver may never
            # have heard that report (it was stopped in between: Ctrl-C, a kill, a lost node). Unheard, a rung at
            # that epoch would be decided without this trial, or with it counted as gone on. So it is said again
            # (to the driver only: MLflow has it), and the scheduler rules on it as on any report; a driver that
            # did hear it hears the same values twice, which changes nothing.
            self._report(self.resumed_report)
        return Start.TRAIN

    def replay(self) -> None:
        """Report again what the earlier attempt reported, marked `replayed`, ending the way it ended."""
        history = list(self.run.history().values())
        for i, metrics in enumerate(history):
            last = i == len(history) - 1
            mark = {REPLAYED: 1, **({REPLAYED_STOPPED_EARLY: 1} if last and self.run.ended == Status.STOPPED_EARLY
                                    else {})}
            self._report({**metrics, **mark})
        if self.run.ended == DIVERGED:
            self._report(self._failure(len(history) + 1, self.run.failure_reason) | {REPLAYED: 1})

    def end_epoch(self, epoch: int, metrics: dict[str, Any], last: bool,
                  save: Callable[[Path], None] | None = None) -> None:
        """Log, checkpoint (rank 0) and report one epoch. The run is marked finished before the last report:
        Tune ends a trial inside its last report, so nothing after it would run."""
        self.epoch = epoch
        self.run.log_metrics(metrics, step=epoch)
        if last:
            self.run.finish(Status.FINISHED)
            self.finished = True
        if save and self.store and self.session.world_rank == 0 and (epoch % self.every == 0 or last):
            with tempfile.TemporaryDirectory(prefix="medpeft-ckpt-") as directory:
                save(Path(directory))
                write_report(Path(directory), metrics, final=last)
                self.store.save(Path(directory), epoch)
        self._report(metrics)
        if not last and self.store and node_draining():
            raise NodeDraining(f"the node is being drained after epoch {epoch}: continuing from its checkpoint "
                               "on another node")

    def log_predictions(self, frame) -> None:
        """Log the per-image predictions (a DataFrame, trainables.predictions) as the contract's Parquet artifact of
        this trial's run (rank 0 only: the other workers' runs are NullRuns). Call it before the last end_epoch,
        which ends the trial inside its report."""
        if self.run is None or not self.run.run_id:
            return
        with tempfile.TemporaryDirectory(prefix="medpeft-pred-") as directory:
            path = Path(directory) / PREDICTIONS_ARTIFACT
            frame.to_parquet(path, index=False)
            self.run.log_artifact(str(path))

    def _report(self, metrics: dict[str, Any]) -> None:
        # With the run's id the driver can mark a trial it stops without searching MLflow for it.
        self.session.report({**metrics, RUN_ID: self.run.run_id} if self.run and self.run.run_id else metrics)

    @staticmethod
    def _failure(epoch: int, reason: str) -> dict[str, Any]:
        # The score as NaN: Tune requires every result to carry the metric the sweep compares on.
        return {EPOCH: epoch, FAILED: 1, FAILURE_REASON: reason, SCORE: float("nan")}

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Around the epoch loop: divergence ends the trial as failed (reported, so the sweep goes on and the
        searcher learns it); Tune's stop passes through; any other error is recorded, then raised."""
        try:
            yield
        except Diverged as e:
            self.run.finish(Status.FAILED, str(e), kind=DIVERGED)
            self._report(self._failure(self.epoch + 1, str(e)))
        except SystemExit:
            raise  # Tune stopped the trial (early stop or shutdown); the driver records why.
        except NodeDraining:
            raise  # not a failure of the trial: its run stays open for the attempt on another node
        except BaseException as e:
            # After the run is recorded finished, only the final report (or checkpoint) can fail: the result stands.
            if self.run is not None and not self.finished:
                self.run.finish(Status.FAILED, f"{type(e).__name__}: {e}", kind="error")
            raise
