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
    best_loss: float | None = None  # its last VAL_BEST_LOSS: SCORE's tie-break (trainables.contract.selection_order)
    round: int = 0  # the cell's search round it belongs to (CellSearch.rounds)
    scores: dict[int, float] = field(default_factory=dict)  # epoch -> SCORE reported there (convergence check)
    # The validation images SCORE is measured on (trainables.contract.VAL_IMAGES), where the task reports them:
    # how far its score moves by chance. A default, not a factory: a state saved before it still loads.
    val_images: int | None = None


@dataclass
class CellASHA:
    """One cell's asynchronous successive halving: Ray's scheduler, and which Tune trials it is tracking (ours to
    know, so that Ray's own bookkeeping stays private to it)."""

    scheduler: AsyncHyperBandScheduler
    members: set[str] = field(default_factory=set)  # Tune trial ids added to `scheduler` and not yet removed


@dataclass
class CellRungs:
    """One cell's synchronous successive-halving record."""

    size: int  # trials in the cell's round (the round's budget)
    first: int = 0  # index of the round's first trial within the cell (its trials are first .. first+size-1)
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
            awaited = {trial_key(cell, index) for index in range(self.first, self.first + self.size)}
        elif rungs[i - 1] in self.decided:
            awaited = set(self.promoted.get(rungs[i - 1], ()))
        else:
            return None
        return awaited - self.dropped

    def latest_rung(self, key: str) -> int | None:
        reached = [rung for rung, values in self.values.items() if key in values]
        return max(reached) if reached else None


ROUND_INITIAL, ROUND_HIGH, ROUND_LOW, ROUND_DOUBLING = "initial", "high", "low", "doubling"


@dataclass
class Round:
    """One round of a cell's search: the planned one, an extension of its learning-rate range beyond one edge, or
    its chosen configuration run again with twice the epochs."""

    kind: str  # ROUND_INITIAL, ROUND_HIGH, ROUND_LOW or ROUND_DOUBLING
    first: int  # index of its first trial within the cell
    size: int  # its trials
    space: dict[str, Any]  # the cell's search space in this round (sweep.plan.spec.Dist by name)
    why: str = ""  # why it was run (empty for the initial round)
    lrs: list[float] = field(default_factory=list)  # the grid sampler's new learning rates (grid rounds only)
    epochs: int | None = None  # ROUND_DOUBLING: the longer trial's epochs
    params: dict[str, Any] | None = None  # ROUND_DOUBLING: the chosen trial's hyperparameters, run again


@dataclass
class CellSearch:
    """A cell's search rounds, and how its search ended (sweep/tune/searcher.py decides both)."""

    rounds: list[Round]
    trial_ids: list[str] = field(default_factory=list)  # Tune ids of the trials handed out, in order
    edge: str = ""  # once ended: one of sweep/tune/rounds.py's EDGE_KINDS ("interior", "stability", "flat", "high", "low")
    note: str = ""  # once ended: what a person reads about its range, e.g. "stability edge: larger ... diverged"
    done: bool = False  # no more rounds: the cell's trials are all handed out
    announced: int = 0  # rounds after the initial one the progress callback has printed
    recorded: bool = False  # the progress callback has written the cell's search onto its MLflow run
    # Searched numeric knobs other than the learning rate whose chosen value is the highest or lowest the cell
    # tried: name -> "high"/"low" (sweep/tune/rounds.py knob_edges; reported, never extended). None: not judged
    # yet, or a state saved before knobs were checked (a default, not a factory, so such a pickle still loads).
    knob_edges: dict[str, str] | None = None

    @property
    def budget(self) -> int:
        return sum(r.size for r in self.rounds)


def round_key(cell: str, round_index: int) -> str:
    """The key of a round's successive-halving record in SweepState.halving (the initial round's is the cell's)."""
    return cell if round_index == 0 else f"{cell}#round={round_index}"


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
    search: dict[str, CellSearch] = field(default_factory=dict)  # cell key -> its rounds (the searcher's)

    def replace_with(self, other: SweepState) -> None:
        """Take another state's contents without changing identity (the scheduler and callbacks hold this one)."""
        self.__dict__.update(other.__dict__)
