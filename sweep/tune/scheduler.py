"""Early stopping per cell: schedulers that only ever compare trials of the same grid cell.

Ray's ASHA compares every trial that reaches a rung with every other trial in its bracket, so one scheduler over
a whole sweep would let a LoRA run on an easy dataset stop a BitFit run on a hard one. Two schedulers here keep
a separate record per cell key:

- `PerCellASHA` (asynchronous): one Ray `AsyncHyperBandScheduler` per cell. A trial reaching a rung is judged at
  once against whatever its cell has recorded there, so nothing ever waits; but with few trials per cell and few
  slots, the first arrivals at a rung are compared with almost nothing and go on.
- `PerCellHalving` (synchronous successive halving): the searcher owns each cell's budget, so every trial of a
  cell is known in advance and a rung can wait for all of them. A trial reaching a rung is paused (its slot goes
  to other cells' trials) until its cell's rung is complete; then exactly the best 1/η go on.

Their records live in the `SweepState` (sweep/tune/state.py, where the rule that saves and restores it is written).
`SCHEDULERS` maps the spec's scheduler.type to how its scheduler is built (fifo: Ray's, every trial to its end).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from sweep.plan.grid import with_seed
from sweep.plan.spec import halving_rungs
from sweep.tune.state import CellASHA, CellRungs, SweepState, round_key
from trainables.contract import (
    EPOCH,
    FAILED,
    REPLAYED,
    REPLAYED_STOPPED_EARLY,
    ROUND_DOUBLING,
    ROUND_KIND_TAG,
    ROUND_TAG,
    SCORE,
    VAL_BEST_LOSS,
    selection_order,
)

if TYPE_CHECKING:
    from sweep.plan.validate import Plan

logger = logging.getLogger(__name__)


def cell_of(trial: Trial) -> str:
    return trial.config["tracking"]["cell_key"]


def trial_key_of(trial: Trial) -> str:
    return trial.config["tracking"]["trial_key"]


def round_of(trial: Trial) -> int:
    """The trial's search round within its cell (sweep/tune/searcher.py adds rounds; 0 is the planned one)."""
    return int(trial.config["tracking"].get("tags", {}).get(ROUND_TAG, 0))


def rounds_key_of(trial: Trial) -> str:
    """The key of the trial's round's halving record (each round of a cell halves its own trials)."""
    return round_key(cell_of(trial), round_of(trial))


def runs_longer(trial: Trial) -> bool:
    """A trial of an epoch-doubling round: it runs past max_t with its schedule stretched, so its rungs are not
    the cell's and no scheduler stops it (it is compared with the cell's other trials once it has ended)."""
    return trial.config["tracking"].get("tags", {}).get(ROUND_KIND_TAG) == ROUND_DOUBLING


def base_cell(key: str) -> str:
    return key.split("#round=")[0]


def searcher_idle(tune_controller) -> bool:
    """The searcher has no trial to hand out now: finished, or (sweep/tune/searcher.py) waiting for running
    trials to end before it can decide on a cell's next round."""
    search_alg = tune_controller.search_alg
    if search_alg.is_finished():
        return True
    searcher = getattr(search_alg, "searcher", None)
    return bool(getattr(searcher, "idle", False))


class _PerCell(FIFOScheduler):
    """What both per-cell schedulers take. Every argument is a keyword, checked here.

    Args:
        state: the SweepState shared with the searcher (which saves it) and the progress callback.
        max_t: epochs of a trial that is never stopped (the spec's `train.epochs`, or the task's max).
        grace_period: epochs before the first comparison (the first rung); capped at max_t.
        reduction_factor: η: at each rung, the best 1/η of the trials compared go on. More than 1.
        metric: the result key compared; the contract's SCORE (higher is better) unless told otherwise.
        mode: "max" or "min": which way `metric` is better.
        time_attr: the result key that counts a trial's progress (epochs completed).
    """

    def __init__(
        self,
        *,
        state: SweepState,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3,
        metric: str = SCORE,
        mode: str = "max",
        time_attr: str = EPOCH,
    ) -> None:
        if not isinstance(state, SweepState):
            raise TypeError(f"state must be a SweepState, got {type(state).__name__}")
        if int(max_t) != max_t or max_t < 1:
            raise ValueError(f"max_t must be a whole number of epochs >= 1, got {max_t!r}")
        if int(grace_period) != grace_period or grace_period < 1:
            raise ValueError(f"grace_period must be a whole number of epochs >= 1, got {grace_period!r}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be more than 1, got {reduction_factor!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        super().__init__()
        self.state = state
        self._metric, self._mode = metric, mode
        self.time_attr, self.max_t = time_attr, int(max_t)
        self.grace_period, self.reduction_factor = min(int(grace_period), int(max_t)), reduction_factor

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # fixed at construction; the searcher uses the same metric and mode


class PerCellASHA(_PerCell):
    """Asynchronous successive halving, independently in every cell, on an explicit epoch counter
    (arguments: see _PerCell)."""

    def _cell(self, trial: Trial) -> CellASHA:
        cell = cell_of(trial)
        if cell not in self.state.asha:
            self.state.asha[cell] = CellASHA(AsyncHyperBandScheduler(
                time_attr=self.time_attr,
                metric=self._metric,
                mode=self._mode,
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                brackets=1,
            ))
        return self.state.asha[cell]

    def _member(self, tune_controller, trial: Trial) -> AsyncHyperBandScheduler:
        cell = self._cell(trial)
        if trial.trial_id not in cell.members:  # e.g. a trial re-added after a restore, or after its node was lost
            cell.scheduler.on_trial_add(tune_controller, trial)
            cell.members.add(trial.trial_id)
        return cell.scheduler

    def _leave(self, tune_controller, trial: Trial) -> None:
        cell = self._cell(trial)
        if trial.trial_id in cell.members:
            cell.scheduler.on_trial_remove(tune_controller, trial)
            cell.members.discard(trial.trial_id)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if trial.status not in (Trial.TERMINATED, Trial.ERROR) and not runs_longer(trial):
            self._member(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if runs_longer(trial):
            return TrialScheduler.CONTINUE
        decision = self._member(tune_controller, trial).on_trial_result(tune_controller, trial, result)
        if result.get(REPLAYED):
            # An attempt that had already ended, reported again after a restore: its values join the rungs and it
            # ends exactly as it did (stopped early only if it was).
            if result.get(REPLAYED_STOPPED_EARLY):
                self.state.stopped_early.add(trial_key_of(trial))
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE if result.get(self.time_attr, 0) < self.max_t else decision
        if decision == TrialScheduler.STOP and result.get(self.time_attr, self.max_t) < self.max_t:
            self.state.stopped_early.add(trial_key_of(trial))
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        cell = self._cell(trial)
        if trial.trial_id in cell.members:
            cell.scheduler.on_trial_complete(tune_controller, trial, result)
            cell.members.discard(trial.trial_id)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._leave(tune_controller, trial)  # a trial Tune restarts is added again (on_trial_add)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._leave(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = len(self.state.stopped_early)
        return f"PerCellASHA: {len(self.state.asha)} cells, {stopped} trials stopped early"


class PerCellHalving(_PerCell):
    """Synchronous successive halving, independently in every cell, on an explicit epoch counter.

    At each rung (grace, grace·η, ... epochs) every trial of the cell still in the race reports, waiting paused
    for the rest; then the best ceil(n/η) go on and the others stop. With a cell's 8 learning rates, 27 epochs,
    grace 3 and η = 3 that is 8·3 + 3·6 + 1·18 = 60 trial-epochs instead of 216. A paused trial resumes from its own
    checkpoint (trainables keep one per epoch), so waiting costs a trial restart, not training.

    Args: `budgets`, each cell's number of trials (cell key -> its search budget, from the plan: a rung waits for
    that many); the rest as _PerCell.
    """

    def __init__(
        self,
        *,
        state: SweepState,
        budgets: dict[str, int],
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3,
        metric: str = SCORE,
        mode: str = "max",
        time_attr: str = EPOCH,
    ) -> None:
        super().__init__(state=state, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor,
                         metric=metric, mode=mode, time_attr=time_attr)
        bad = {cell: n for cell, n in budgets.items() if int(n) != n or n < 1}
        if bad:
            raise ValueError(f"every cell's budget must be a whole number of trials >= 1, got {bad}")
        self.budgets = dict(budgets)
        self._sign = 1.0 if self._mode == "max" else -1.0
        self.rungs = halving_rungs(self.max_t, self.grace_period, self.reduction_factor)
        self._seen: list[Trial] | None = None  # the controller's trial list, of which ...
        self._ended_prefix = 0  # ... this many first trials have ended
        self._erred: dict[str, Trial] = {}  # trial id -> a trial Tune reported errored, until it is seen to stay so

    def __getstate__(self) -> dict:  # Tune pickles the scheduler; not its trials
        return {**self.__dict__, "_seen": None, "_ended_prefix": 0, "_erred": {}}

    def _cell(self, key: str) -> CellRungs:
        """The halving record of a cell's round (`key`: sweep.tune.state.round_key): the planned round's size is
        the cell's budget, a later round's is what the searcher added (SweepState.search)."""
        if key not in self.state.halving:
            if key in self.budgets:
                self.state.halving[key] = CellRungs(self.budgets[key])
            else:
                added = self.state.search[base_cell(key)].rounds[int(key.rpartition("#round=")[2])]
                self.state.halving[key] = CellRungs(added.size, first=added.first)
        return self.state.halving[key]

    def _earlier(self, key: str) -> list[CellRungs]:
        """The halving records of the cell's rounds before this one (none for the planned round)."""
        cell, _, r = key.partition("#round=")
        return [self.state.halving[k] for k in (round_key(cell, i) for i in range(int(r or 0)))
                if k in self.state.halving]

    # -- Tune's TrialScheduler interface ------------------------------------------------------------------

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if runs_longer(trial):
            return TrialScheduler.CONTINUE
        cell, key = rounds_key_of(trial), trial_key_of(trial)
        rungs = self._cell(cell)
        if result.get(FAILED):
            self._drop(tune_controller, trial)
            return TrialScheduler.CONTINUE  # the trial ends itself
        epoch = int(result.get(self.time_attr, 0))
        # Rungs this trial is already past without a record (it went on before a driver restart whose snapshot
        # predates that): it counts as promoted there, so its cell never waits for it.
        passed = [r for r in self.rungs if r < epoch and r not in rungs.decided
                  and key not in rungs.values.get(r, {}) and key not in rungs.promoted.get(r, ())]
        for rung in passed:
            rungs.promoted.setdefault(rung, set()).add(key)
        if passed:
            self._settle(tune_controller, cell, reporting=key)
        if result.get(REPLAYED):
            # An attempt that had already ended, reported again after a restore: it ends exactly as it did.
            if result.get(REPLAYED_STOPPED_EARLY):
                rungs.lost.add(key)
                self.state.stopped_early.add(key)
                self._settle(tune_controller, cell)
                return TrialScheduler.STOP
            if epoch in self.rungs and epoch not in rungs.decided:
                rungs.promoted.setdefault(epoch, set()).add(key)
                self._settle(tune_controller, cell)
            return TrialScheduler.CONTINUE
        if epoch not in self.rungs or key in rungs.promoted.get(epoch, ()):
            return TrialScheduler.CONTINUE  # between rungs, or a resumed trial reporting a rung it already passed
        if key in rungs.lost:
            return TrialScheduler.STOP
        score = result.get(self._metric)
        rungs.values.setdefault(epoch, {})[key] = (None if score is None else self._sign * float(score),
                                                   result.get(VAL_BEST_LOSS))
        self._settle(tune_controller, cell, reporting=key)
        if epoch not in rungs.decided:
            return TrialScheduler.PAUSE
        if key not in rungs.promoted[epoch]:
            # Lost here, or (after it had failed) decided without it: either way stopped early, and recorded so.
            rungs.lost.add(key)
            self.state.stopped_early.add(key)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        # A trial re-queued after an error (see on_trial_error) will report again: its rungs wait for it.
        self._erred.pop(trial.trial_id, None)
        # After a driver restart, and after a lost node, Tune hands trials back as pending and starts every
        # pending trial: one that waits at a rung (or lost there) is made paused again before Tune files it.
        if trial.status == Trial.PENDING and not runs_longer(trial) and not self._may_run(trial):
            trial.set_status(Trial.PAUSED)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """Promoted trials first (their cells finish sooner), then new ones; never one waiting at a rung."""
        for trial_id, trial in list(self._erred.items()):
            if trial.status == Trial.ERROR:  # not re-queued: it failed for good
                del self._erred[trial_id]
                self._drop(tune_controller, trial)
        trials = self._unended(tune_controller.get_trials())
        for trial in trials:
            if trial.status == Trial.PAUSED and trial_key_of(trial) in self._cell(rounds_key_of(trial)).lost:
                tune_controller.stop_trial(trial)  # lost at a rung decided while it was away (a restart)
        chosen = self._first_runnable(trials)
        if chosen is None and self._stalled(tune_controller, trials):
            self._unstall(tune_controller, trials)
            chosen = self._first_runnable(trials)
        return chosen

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        if result.get(FAILED) and not runs_longer(trial):
            self._drop(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        # Tune calls this for a trial that failed for good, and also for one it stops to restart from its
        # checkpoint (its node was lost, or it failed within `max_failures`), re-adding that one at once
        # (on_trial_add). Dropping it here would decide its rungs without it, and stop it unrecorded when it got
        # there, or leave it waiting at a rung decided without it, for ever. So the verdict waits for Tune's
        # next step (choose_trial_to_run): still errored, it is dropped.
        self._erred[trial.trial_id] = trial

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        if runs_longer(trial):
            return
        if trial_key_of(trial) not in self._cell(rounds_key_of(trial)).lost:  # not one of ours: stop waiting for it
            self._drop(tune_controller, trial)

    def debug_string(self) -> str:
        waiting = sum(len(set(v) - r.promoted.get(rung, set()) - r.lost)
                      for r in self.state.halving.values() for rung, v in r.values.items() if rung not in r.decided)
        return (f"PerCellHalving: rungs at epochs {self.rungs}, {waiting} trials waiting at a rung, "
                f"{len(self.state.stopped_early)} stopped early")

    # -- helpers --------------------------------------------------------------------------------------------

    def _unended(self, trials: list[Trial]) -> list[Trial]:
        """The trials from the first one not yet ended. Tune keeps every trial of the experiment in the order it
        added them and an ended trial stays ended, so the ended prefix is skipped for good: choosing a trial
        then costs the live trials, not the thousands already done."""
        if trials is not self._seen or self._ended_prefix > len(trials):
            self._seen, self._ended_prefix = trials, 0
        while self._ended_prefix < len(trials) and trials[self._ended_prefix].status in (Trial.TERMINATED,
                                                                                           Trial.ERROR):
            self._ended_prefix += 1
        return trials[self._ended_prefix:]

    def _first_runnable(self, trials: list[Trial]) -> Trial | None:
        waiting = [t for t in trials if t.status in (Trial.PAUSED, Trial.PENDING) and self._may_run(t)]
        return next((t for t in waiting if t.status == Trial.PAUSED), waiting[0] if waiting else None)

    @staticmethod
    def _stalled(tune_controller, trials: list[Trial]) -> bool:
        """Trials wait at rungs, yet nothing runs, nothing is queued and the searcher has no more to give."""
        return (any(t.status == Trial.PAUSED for t in trials)
                and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
                and searcher_idle(tune_controller))

    def _unstall(self, tune_controller, trials: list[Trial]) -> None:
        """A safety net, not a path the bookkeeping above should reach: decide each waiting cell's pending rungs
        on the trials that did report, rather than wait forever for ones that never will."""
        for cell in {rounds_key_of(t) for t in trials if t.status == Trial.PAUSED}:
            rungs = self._cell(cell)
            for i, rung in enumerate(self.rungs):
                awaited = rungs.awaited(base_cell(cell), self.rungs, i)
                if awaited is None or rung in rungs.decided:
                    continue
                missing = awaited - set(rungs.values.get(rung, {})) - rungs.promoted.get(rung, set()) - rungs.lost
                if missing:
                    logger.warning("Successive halving: %s waited at epoch %d for %s, which cannot report any "
                                   "more; deciding on the trials that did.", cell, rung, ", ".join(sorted(missing)))
                    rungs.dropped |= missing
                self._settle(tune_controller, cell)

    def _may_run(self, trial: Trial) -> bool:
        if runs_longer(trial):
            return True
        rungs, key = self._cell(rounds_key_of(trial)), trial_key_of(trial)
        latest = rungs.latest_rung(key)
        if key in rungs.lost:
            return False
        return latest is None or (latest in rungs.decided and key in rungs.promoted[latest])

    def _drop(self, tune_controller, trial: Trial) -> None:
        if runs_longer(trial):
            return
        cell = rounds_key_of(trial)
        self._cell(cell).dropped.add(trial_key_of(trial))
        self._settle(tune_controller, cell)

    def _settle(self, tune_controller, cell: str, reporting: str | None = None) -> None:
        """Decide every rung of the cell's round (`cell`: its round key) that has become complete; stop the losers
        that wait paused.

        A later round's trials are ranked together with the earlier rounds' trials that reported at the same rung
        (their recorded scores): of all of them, the best ceil(n/η) would go on, and of this round's trials those
        among them do. Earlier trials are never rerun, so their fates stand."""
        rungs = self._cell(cell)
        earlier = self._earlier(cell)
        for i, rung in enumerate(self.rungs):
            if rung in rungs.decided:
                continue
            awaited = rungs.awaited(base_cell(cell), self.rungs, i)
            if awaited is None:
                return
            values = rungs.values.get(rung, {})
            # Went on already (replayed, or past the rung before a restart), or stopped here already (replayed).
            already, out = rungs.promoted.get(rung, set()) & awaited, rungs.lost & awaited
            if not awaited <= set(values) | already | out:
                return
            recorded = {k: v for record in earlier for k, v in record.values.get(rung, {}).items()}
            if recorded:
                pool = {**recorded, **{k: values[k] for k in awaited - already - out}}
                keep = max(1, math.ceil((len(recorded) + len(awaited)) / self.reduction_factor))
                best = sorted(pool, key=lambda k: selection_order(*pool[k], k))[:keep]
                winners = already | (set(best) & awaited)
            else:
                keep = max(1, math.ceil(len(awaited) / self.reduction_factor)) if awaited else 0
                ranked = sorted(awaited - already - out, key=lambda k: selection_order(*values[k], k))
                winners = already | set(ranked[: max(0, keep - len(already))])
            losers = awaited - winners
            rungs.promoted[rung], rungs.lost = winners, rungs.lost | losers
            rungs.decided.add(rung)
            self.state.stopped_early.update(losers)
            waiting_losers = losers - {reporting}
            if waiting_losers and tune_controller is not None:
                for trial in self._unended(tune_controller.get_trials()):
                    if trial_key_of(trial) in waiting_losers and trial.status in (Trial.PAUSED, Trial.PENDING):
                        tune_controller.stop_trial(trial)



@dataclass(frozen=True)
class SchedulerKind:
    """One value of the spec's scheduler.type: how its scheduler is built, and whether it is synchronous (a rung
    waits, its trials paused, for every trial of its cell: the searcher then hands out a cell's trials together, and
    only trials queued ahead count against the slots, since paused ones hold no resources)."""

    build: Callable[[Plan, SweepState], TrialScheduler]
    synchronous: bool = False


def _rungs(plan: Plan) -> dict[str, float]:
    return {"max_t": plan.max_epochs, "grace_period": plan.spec.scheduler.grace_period,
            "reduction_factor": plan.spec.scheduler.reduction_factor}


def _halving(plan: Plan, state: SweepState) -> PerCellHalving:
    # Every cell adaptive seeds may add, too: each has the budget of the cell it repeats.
    budgets = {with_seed(c, seed).key: c.budget for c in plan.cells
               for seed in range(max(plan.spec.max_seeds, c.seed + 1))}
    return PerCellHalving(state=state, budgets=budgets, **_rungs(plan))


# The spec's scheduler.type -> its scheduler (sweep.plan.spec.SchedulerSpec lists the same names; a test checks).
SCHEDULERS: dict[str, SchedulerKind] = {
    "halving": SchedulerKind(_halving, synchronous=True),
    "asha": SchedulerKind(lambda plan, state: PerCellASHA(state=state, **_rungs(plan))),
    "fifo": SchedulerKind(lambda plan, state: FIFOScheduler()),  # every trial runs to its end
}
