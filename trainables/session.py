"""The small interface a training loop talks to: report metrics (+ a checkpoint), find the checkpoint to resume
from, and know its rank.

A loop is written once against `current_session()`. The launcher decides what stands behind it:
`TuneSession` when the loop runs in the Tune trial's own process (one worker), `TrainSession` when it runs in a
Ray Train worker of a `TorchTrainer` (several workers), `LocalSession` in tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class Session(Protocol):
    world_rank: int
    world_size: int

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        """Hand metrics (and optionally a directory to persist as a checkpoint) to the orchestrator."""

    def checkpoint_dir(self) -> contextlib.AbstractContextManager[str | None]:
        """A local directory holding the checkpoint to resume from, or None for a fresh start."""


class TuneSession:
    """One worker inside a Tune function trainable."""

    world_rank = 0
    world_size = 1

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield path


class TrainSession:
    """One of several Ray Train workers (DDP) launched by a TorchTrainer inside a Tune trial."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        # Every rank must call report; only rank 0 hands over a checkpoint.
        checkpoint = None
        if checkpoint_dir and self.world_rank == 0:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield path


class LocalSession:
    """Runs a loop without Ray: keeps every report, and the latest checkpoint in a directory of its own."""

    world_rank = 0
    world_size = 1

    def __init__(self, resume_from: str | None = None, stop_after_reports: int | None = None) -> None:
        self.reports: list[dict[str, Any]] = []
        self.latest_checkpoint: str | None = resume_from
        self._stop_after = stop_after_reports
        self._dir = tempfile.mkdtemp(prefix="medpeft-local-session-")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            target = Path(self._dir) / f"checkpoint_{len(self.reports):06d}"
            shutil.copytree(checkpoint_dir, target)
            self.latest_checkpoint = str(target)
        if self._stop_after is not None and len(self.reports) >= self._stop_after:
            raise StopTraining(f"stopped after {len(self.reports)} reports")

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        yield self.latest_checkpoint


class StopTraining(SystemExit):
    """Raised by `LocalSession.report` to imitate Tune stopping a trial (Tune raises SystemExit there)."""


_current: Session | None = None


def current_session() -> Session:
    if _current is None:
        raise RuntimeError("No training session: run the loop through trainables.launch or use_session(...).")
    return _current


@contextlib.contextmanager
def use_session(session: Session) -> Iterator[Session]:
    global _current
    previous, _current = _current, session
    try:
        yield session
    finally:
        _current = previous
