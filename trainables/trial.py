"""What every task's training loop does around its epochs, written once: the trial's MLflow run (found again by
its key), its checkpoint store, the per-epoch log/checkpoint/report, replaying an attempt that already finished,
and ending as failed with the reason when the loss diverges or the code raises."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainables.checkpoints import CheckpointStore
from trainables.config import TrialConfig
from trainables.session import Session
from trainables.tasks import SCORE
from trainables.tracking import TrialRun, config_hash, open_trial_run


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the trial ends as failed (a result, not a crash)."""


class Trial:
    def __init__(self, config: dict[str, Any], cfg: TrialConfig, session: Session, checkpoint_every: int = 1):
        self.cfg, self.session, self.every = cfg, session, checkpoint_every
        self.digest = config_hash(config)
        self.store = (CheckpointStore(f"{cfg.storage}/checkpoints", cfg.tracking.trial_key, self.digest)
                      if cfg.storage else None)
        self.run: TrialRun | None = None
        self.epoch = 0  # the last epoch completed (restored or trained)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """A local copy of this trial's newest checkpoint, or None for a fresh start."""
        if self.store is None:
            yield None
            return
        with self.store.latest() as checkpoint:
            yield checkpoint

    def start(self, params: dict[str, Any], tags: dict[str, str], resumed_epoch: int) -> bool:
        """Open the MLflow run. Returns True when an earlier attempt of this exact trial already ended (finished,
        stopped early or diverged): its reports are then replayed from MLflow and the loop must not train."""
        self.epoch = resumed_epoch
        self.run = open_trial_run(self.cfg.tracking, self.session.world_rank, params, tags, self.digest,
                                  resuming=resumed_epoch > 0)
        if self.run.ended:
            self.replay()
            return True
        if resumed_epoch:
            self.run.set_tags({"resumed_from_epoch": str(resumed_epoch)})
        return False

    def replay(self) -> None:
        """Report again what the earlier attempt reported, marked `replayed`, ending the way it ended."""
        history = list(self.run.history().values())
        for i, metrics in enumerate(history):
            last = i == len(history) - 1
            mark = {"replayed": 1, **({"replayed_stopped_early": 1} if last and self.run.ended == "stopped_early"
                                      else {})}
            self.session.report({**metrics, **mark})
        if self.run.ended == "diverged":
            self.session.report(self._failure(len(history) + 1, self.run.failure_reason) | {"replayed": 1})

    def end_epoch(self, epoch: int, metrics: dict[str, Any], last: bool,
                  save: Callable[[Path], None] | None = None) -> None:
        """Log, checkpoint (rank 0) and report one epoch. The run is marked finished before the last report:
        Tune ends a trial inside its last report, so nothing after it would run."""
        self.epoch = epoch
        self.run.log_metrics(metrics, step=epoch)
        if last:
            self.run.finish("finished")
        if save and self.store and self.session.world_rank == 0 and (epoch % self.every == 0 or last):
            with tempfile.TemporaryDirectory(prefix="medpeft-ckpt-") as directory:
                save(Path(directory))
                self.store.save(Path(directory), epoch)
        self.session.report(metrics)

    @staticmethod
    def _failure(epoch: int, reason: str) -> dict[str, Any]:
        # The score as NaN: Tune requires every result to carry the metric the sweep compares on.
        return {"epoch": epoch, "failed": 1, "failure_reason": reason, SCORE: float("nan")}

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Around the epoch loop: divergence ends the trial as failed (reported, so the sweep goes on and the
        searcher learns it); Tune's stop passes through; any other error is recorded, then raised."""
        try:
            yield
        except Diverged as e:
            self.run.finish("failed", str(e), kind="diverged")
            self.session.report(self._failure(self.epoch + 1, str(e)))
        except SystemExit:
            raise  # Tune stopped the trial (early stop or shutdown); the driver records why.
        except BaseException as e:
            if self.run is not None:
                self.run.finish("failed", f"{type(e).__name__}: {e}", kind="error")
            raise
