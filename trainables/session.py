"""The small interface a training loop talks to: report metrics and know its rank. (Checkpoints go to a
`CheckpointStore` on the sweep's storage, keyed by trial: see trainables.checkpoints.)

A loop is written once against `current_session()`. The launcher decides what stands behind it:
`TuneSession` when the loop runs in the Tune trial's own process (one worker), `TrainSession` when it runs in a
Ray Train worker of a `TorchTrainer` (several workers), `LocalSession` in tests and benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class Session(Protocol):
    world_rank: int
    world_size: int

    def report(self, metrics: dict[str, Any]) -> None:
        """Hand one epoch's metrics to the orchestrator (which may end the trial inside this call)."""


class TuneSession:
    """One worker inside a Tune function trainable."""

    world_rank = 0
    world_size = 1

    def __init__(self) -> None:
        self.reports = 0

    def report(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        self.reports += 1
        tune.report(metrics)


class TrainSession:
    """One of several Ray Train workers (DDP) launched by a TorchTrainer inside a Tune trial."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)  # every rank reports; Tune hears rank 0's metrics


class LocalSession:
    """Runs a loop without Ray, keeping every report (benchmarks; the tests' StoppingSession also stops the loop the
    way Tune does)."""

    world_rank = 0
    world_size = 1

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(dict(metrics))


_current: Session | None = None


def current_session() -> Session:
    if _current is None:
        raise RuntimeError("No training session: run the loop through trainables.trainable or use_session(...).")
    return _current


@contextlib.contextmanager
def use_session(session: Session) -> Iterator[Session]:
    global _current
    previous, _current = _current, session
    try:
        yield session
    finally:
        _current = previous
