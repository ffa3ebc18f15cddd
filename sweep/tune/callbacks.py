"""Driver-side Tune callback: one line per ended trial, and early stops recorded in MLflow; a line per search
round a cell adds, and, once its search is done, what it tried written onto its cell run.

A trial stopped by the scheduler is ended by Tune, not by its own code, so the driver marks its MLflow run
(`status=stopped_early`) and closes it. The callback is pickled with the experiment (tuner.pkl) and shares the
SweepState object with the searcher and scheduler, which restore keeps shared.
"""

from __future__ import annotations

import os
import sys

from ray.tune import Callback
from ray.tune.experiment import Trial

from sweep.tune.rounds import describe
from sweep.tune.scheduler import cell_of, trial_key_of
from sweep.tune.state import SweepState
from trainables.contract import (
    EPOCH,
    FAILED,
    FAILURE_REASON,
    REPLAYED,
    RUN_ID,
    SEARCH_TAG,
    STATUS_TAG,
    TRIAL_KEY_TAG,
    Status,
)


def node_lost(error: BaseException | None) -> bool:
    """The trial's actor died with its node or became unreachable (a spot preemption, a node removed or crashed),
    not of its own code (that arrives as a RayTaskError)."""
    from ray.exceptions import ActorUnavailableError, NodeDiedError, RayActorError, RayTaskError

    from trainables.contract import NodeDraining

    if isinstance(error, NodeDiedError | ActorUnavailableError):
        return True
    if isinstance(error, RayTaskError) and isinstance(error.as_instanceof_cause(), NodeDraining):
        return True  # the trial left a draining node after checkpointing
    if isinstance(error, RayActorError):
        text = str(error).lower()
        return bool(getattr(error, "preempted", False)) or ("node" in text and ("died" in text or "dead" in text))
    return False


def last_error(trial: Trial) -> BaseException | None:
    """The error Tune just recorded for the trial: its local pickle (written at once; the copy in the sweep's
    storage follows later)."""
    import cloudpickle

    path = trial.pickled_error_file
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            try:
                return cloudpickle.load(f)
            except Exception:  # not unpicklable here: no verdict
                return None
    return trial.get_pickled_error()


class NodeLossIsNotAFailure(Callback):
    """A trial that lost its node restarts from its last checkpoint elsewhere, and that restart does not use up its
    failure budget (`FailureConfig.max_failures`, meant for the trial's own errors): Tune counts a preemption
    announced by a drain as no failure, but a node that disappears without warning as one. At most `max_forgiven`
    losses per trial are forgiven, so a trial that takes its worker down itself every time (say, out of memory)
    still ends."""

    def __init__(self, max_forgiven: int = 3) -> None:
        if max_forgiven < 0:
            raise ValueError(f"max_forgiven must be >= 0, got {max_forgiven}")
        self.max_forgiven = max_forgiven
        self.forgiven: dict[str, int] = {}  # trial key -> node losses forgiven (saved with the experiment)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        key = trial_key_of(trial)
        if (node_lost(last_error(trial)) and trial.run_metadata.num_failures > 0
                and self.forgiven.get(key, 0) < self.max_forgiven):
            self.forgiven[key] = self.forgiven.get(key, 0) + 1
            trial.run_metadata.num_failures -= 1
            print(f"[node lost] {trial_key_of(trial)}: restarting from its last checkpoint on another node "
                  "(not counted as a failure)", file=sys.stdout, flush=True)


class SweepProgress(Callback):
    """One line per trial that ends, `[done/total]`: `total` is the planned trials (of the `planned` cells) and,
    as soon as the searcher knows them, the trials the sweep added since: search rounds beyond a cell's first
    and every trial of a cell adaptive seeds added."""

    planned: frozenset[str] = frozenset()  # a progress pickled before it knew its planned cells (an older sweep)

    def __init__(self, state: SweepState, uri: str, experiment_id: str, total: int, metric: str, max_t: int,
                 planned: frozenset[str] = frozenset()) -> None:
        self.state, self.uri, self.experiment_id = state, uri, experiment_id
        self.total, self.metric, self.max_t = total, metric, max_t
        self.planned = planned
        self._client = None
        self._ended: set[str] | None = None  # ids of ended trials, counted from Tune's list once, then kept

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_ended": None}

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        key = trial_key_of(trial)
        result = trial.last_result or {}
        epoch = int(result.get(EPOCH, 0) or 0)
        stopped = key in self.state.stopped_early
        # A trial's own length: an epoch doubling (sweep/tune/rounds.py) runs longer than the sweep's epochs.
        planned = (trial.config.get("train") or {}).get("epochs") or self.max_t
        if result.get(FAILED):
            verdict = f"FAILED at epoch {epoch}: {result.get(FAILURE_REASON, '')}"
        elif stopped:
            verdict = f"stopped early after {epoch}/{planned} epochs"
            if not result.get(REPLAYED):  # a replayed trial's run already says how it ended
                self._mark_stopped(key, result.get(RUN_ID))
        else:
            verdict = f"finished {epoch}/{planned} epochs"
        if result.get(REPLAYED):
            verdict += " before the interruption (replayed from MLflow)"
        self._print(trials, key, trial, verdict, result)
        self._rounds(trial)

    def _rounds(self, trial: Trial) -> None:
        """The searcher has decided on the cell when its last trial completes (it hears before callbacks)."""
        cell = cell_of(trial)
        search = self.state.search.get(cell)
        if search is None:
            return
        while search.announced < len(search.rounds) - 1:
            search.announced += 1
            added = search.rounds[search.announced]
            print(f"[round {search.announced}] {cell}: {added.kind}, {added.size} trial(s): {added.why}",
                  file=sys.stdout, flush=True)
        if search.done and search.edge and not search.recorded:
            records = [self.state.trials[t] for t in search.trial_ids if t in self.state.trials]
            described = describe(search, records)
            print(f"[search] {cell}: {described[SEARCH_TAG] or 'done'}", file=sys.stdout, flush=True)
            run_id = trial.config["tracking"].get("parent_run_id")
            if run_id:
                from mlflow import MlflowClient

                self._client = self._client or MlflowClient(self.uri)
                for tag, value in described.items():
                    self._client.set_tag(run_id, tag, value)
            search.recorded = True

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        where = trial.error_file or "the trial's error.txt"
        self._print(trials, trial_key_of(trial), trial, f"ERROR (see {where})", trial.last_result or {})

    def _print(self, trials: list[Trial], key: str, trial: Trial, verdict: str, result: dict) -> None:
        if self._ended is None:
            self._ended = {t.trial_id for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)}
        self._ended.add(trial.trial_id)
        done = len(self._ended)
        searched = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in sorted(trial.config.get("searched", {}).items()))
        score = result.get(self.metric)
        score_text = f"  {self.metric}={score:.4f}" if isinstance(score, float) else ""
        seconds = float(result.get("time_total_s", 0.0) or 0.0)
        total = max(self.expected(), done)
        print(f"[{done:>{len(str(total))}}/{total}] {key}  {searched}  {verdict}{score_text}  ({seconds:.0f}s)",
              file=sys.stdout, flush=True)

    def expected(self) -> int:
        """The trials the sweep will have run, as far as the searcher knows now (it records every cell it walks,
        added ones included, in the shared state with its rounds; a planned cell's first round is in `total`)."""
        if not self.planned:  # without the planned cells, the added ones cannot be told apart: the plan alone
            return self.total
        return self.total + sum(search.budget - (search.rounds[0].size if key in self.planned else 0)
                                for key, search in self.state.search.items())

    def _mark_stopped(self, trial_key: str, run_id: str | None) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from trainables.mlflow_run import find_run

        self._client = self._client or MlflowClient(self.uri)

        def mark(run_id: str) -> None:
            self._client.set_tag(run_id, STATUS_TAG, Status.STOPPED_EARLY)
            self._client.set_terminated(run_id, "FINISHED")

        if run_id:  # the run the trial reported from: no search (which slows with every run in the experiment)
            try:
                # Marked already when a trial stopped at a rung is stopped again after a restart (the saved state
                # predates its stop): its run keeps the time it really ended.
                if self._client.get_run(run_id).data.tags.get(STATUS_TAG) != Status.STOPPED_EARLY:
                    mark(run_id)
                return
            except MlflowException:
                pass  # replaced since (a later attempt started over): find the current one
        run = find_run(self._client, self.experiment_id, TRIAL_KEY_TAG, trial_key)
        if run is not None and run.data.tags.get(STATUS_TAG) == Status.RUNNING:  # the worker's final word stands
            mark(run.info.run_id)
