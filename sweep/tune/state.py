"""What the searcher and the per-cell schedulers must remember across a driver restart, in one typed object.

How it survives a restart (the rule, written once): Tune pickles the scheduler and the callbacks once, when the
experiment starts (tuner.pkl), and the searcher with every experiment snapshot. The searcher, the scheduler and
the progress callback all hold the same `SweepState`; the searcher's `save` pickles it with each snapshot, and its
`restore` loads that copy *into* the object the restored scheduler and callbacks already hold
(`SweepState.replace_with`), so the three stay shared and the scheduler's rung records are as recent as the last
snapshot, not as old as the start. Nothing else of theirs needs saving: what they keep outside it (Tune's trial
objects, caches) is rebuilt from Tune's own restored trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler

from sweep.plan.grid import trial_key
from trainables.contract import Status


@dataclass
class TrialRecord:
    """The searcher's record of one trial it suggested."""

    cell: str
    index: int  # position of the trial within its cell: part of its trial key
    number: int  # the Optuna trial number in the cell's study
    params: dict[str, Any]
    status: Status = Status.RUNNING
    value: float | None = None  # its last score (SCORE); None for a failed trial


@dataclass
class CellASHA:
    """One cell's asynchronous successive halving: Ray's scheduler, and which Tune trials it is tracking (ours to
    know, so that Ray's own bookkeeping stays private to it)."""

    scheduler: AsyncHyperBandScheduler
    members: set[str] = field(default_factory=set)  # Tune trial ids added to `scheduler` and not yet removed


@dataclass
class CellRungs:
    """One cell's synchronous successive-halving record."""

    size: int  # trials in the cell (its search budget)
    # rung -> trial key -> (SCORE oriented higher-is-better, VAL_BEST_LOSS) reported there; ranked by
    # trainables.contract.selection_order, the rule of the final choice too
    values: dict[int, dict[str, tuple[float | None, float | None]]] = field(default_factory=dict)
    promoted: dict[int, set[str]] = field(default_factory=dict)  # rung -> trial keys that went on from it
    decided: set[int] = field(default_factory=set)  # rungs whose comparison has been made
    lost: set[str] = field(default_factory=set)  # trial keys stopped at a rung
    dropped: set[str] = field(default_factory=set)  # trial keys that failed for good: no rung waits for them

    def awaited(self, cell: str, rungs: list[int], i: int) -> set[str] | None:
        """Who must report at rung i before it is decided; None while rung i-1 is undecided."""
        if i == 0:
            awaited = {trial_key(cell, index) for index in range(self.size)}
        elif rungs[i - 1] in self.decided:
            awaited = set(self.promoted.get(rungs[i - 1], ()))
        else:
            return None
        return awaited - self.dropped

    def latest_rung(self, key: str) -> int | None:
        reached = [rung for rung, values in self.values.items() if key in values]
        return max(reached) if reached else None


@dataclass
class SweepState:
    """Everything the searcher and schedulers must remember across a driver restart (see the module's rule)."""

    studies: dict[str, optuna.Study] = field(default_factory=dict)  # cell key -> its Optuna study
    suggested: dict[str, int] = field(default_factory=dict)  # cell key -> trials suggested so far
    trials: dict[str, TrialRecord] = field(default_factory=dict)  # Tune trial id -> record
    asha: dict[str, CellASHA] = field(default_factory=dict)  # cell key -> its ASHA (scheduler: asha)
    halving: dict[str, CellRungs] = field(default_factory=dict)  # cell key -> its rungs (scheduler: halving)
    stopped_early: set[str] = field(default_factory=set)  # trial keys stopped by the scheduler
    cursor: int = 0  # round-robin position over cells

    def replace_with(self, other: SweepState) -> None:
        """Take another state's contents without changing identity (the scheduler and callbacks hold this one)."""
        self.__dict__.update(other.__dict__)
