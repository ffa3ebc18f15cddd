"""ASHA per cell: early stopping that only ever compares trials of the same grid cell.

Ray's ASHA compares every trial that reaches a rung with every other trial in its bracket, so one scheduler over
a whole sweep would let a LoRA run on an easy dataset stop a BitFit run on a hard one. This scheduler keeps one
Ray `AsyncHyperBandScheduler` per cell key and routes each trial to its cell's. The per-cell schedulers live in
the `SweepState` the searcher saves, so their rung records survive a driver restart.
"""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from sweep.searcher import SweepState


def cell_of(trial: Trial) -> str:
    return trial.config["tracking"]["cell_key"]


def trial_key_of(trial: Trial) -> str:
    return trial.config["tracking"]["trial_key"]


class PerCellASHA(FIFOScheduler):
    """Asynchronous successive halving, independently in every cell, on an explicit epoch counter."""

    def __init__(
        self,
        state: SweepState,
        metric: str,
        mode: str,
        max_t: int,
        time_attr: str = "epoch",
        grace_period: int = 1,
        reduction_factor: float = 3,
    ) -> None:
        super().__init__()
        self.state = state
        self._metric, self._mode = metric, mode
        self.time_attr, self.max_t = time_attr, max_t
        self.grace_period, self.reduction_factor = min(grace_period, max_t), reduction_factor

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # fixed at construction; the searcher uses the same metric and mode

    def _asha(self, trial: Trial) -> AsyncHyperBandScheduler:
        cell = cell_of(trial)
        if cell not in self.state.asha:
            self.state.asha[cell] = AsyncHyperBandScheduler(
                time_attr=self.time_attr,
                metric=self._metric,
                mode=self._mode,
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                brackets=1,
            )
        return self.state.asha[cell]

    def _member(self, tune_controller, trial: Trial) -> AsyncHyperBandScheduler:
        asha = self._asha(trial)
        if trial.trial_id not in asha._trial_info:  # e.g. a trial re-added after a restore
            asha.on_trial_add(tune_controller, trial)
        return asha

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if trial.status not in (Trial.TERMINATED, Trial.ERROR):
            self._member(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        decision = self._member(tune_controller, trial).on_trial_result(tune_controller, trial, result)
        if result.get("replayed"):
            # An attempt that had already ended, reported again after a restore: its values join the rungs and it
            # ends exactly as it did (stopped early only if it was).
            if result.get("replayed_stopped_early"):
                self.state.stopped_early.add(trial_key_of(trial))
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE if result.get(self.time_attr, 0) < self.max_t else decision
        if decision == TrialScheduler.STOP and result.get(self.time_attr, self.max_t) < self.max_t:
            self.state.stopped_early.add(trial_key_of(trial))
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        asha = self._asha(trial)
        if trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        stopped = len(self.state.stopped_early)
        return f"PerCellASHA: {len(self.state.asha)} cells, {stopped} trials stopped early"
