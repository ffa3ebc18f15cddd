"""Adaptive seeds while the sweep runs (`seeds: {initial: 3, max: 10}`): when the searcher has handed out every
planned trial, it asks a `SeedExtender` which cells to add. The extender reads the sweep's results from MLflow,
asks sweep.results.seeds which comparisons are undecided, and returns every cell added so far (new ones get their
MLflow cell run first). The added cells are new cells of the same Tune experiment, with keys like any other
(`.../seed=3`), so their trials are resumed, replayed or skipped on `--resume` exactly as the planned ones; and as
the answer is a function of MLflow's contents, a restarted driver derives the same cells again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.plan.grid import Cell, base_config
from sweep.plan.spec import SweepSpec
from sweep.results import predictions, seeds
from sweep.results.table import mark_best_in_cell, trials_table
from sweep.store import mlflow_experiment
from sweep.tune.searcher import CellPlan, every_epoch
from trainables.contract import Status


@dataclass
class SeedExtender:
    sweep: str
    uri: str
    artifacts: str
    spec: SweepSpec
    cells: list[Cell]  # the planned cells (initial seeds)
    prepared: dict[str, dict]
    experiment_dir: str
    rope: float
    cache: str  # folder for the chosen trials' predictions, read once
    interval_s: float = 15.0  # read MLflow at most this often while trials run
    _last: float = 0.0
    _answer: list[CellPlan] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    _told: set[str] = field(default_factory=set)  # comparisons the cap left without a seed, printed once

    def __call__(self, ended: dict[str, Status], fresh: bool, room: int | None = None,
                 round_cost: Callable[[int, int], int] | None = None) -> list[CellPlan]:
        """Every added cell so far (as CellPlans). `ended`: the trial keys the searcher saw end, and how (MLflow
        may not show a trial stopped a moment ago yet); `fresh`: read MLflow now, whatever the interval; `room`:
        the trial-epochs the sweep's cap leaves (None: no cap), each new cell costing at most
        `round_cost(its trials, epochs)` (its planned round's)."""
        if not fresh and time.time() - self._last < self.interval_s:
            return self._answer
        self._last = time.time()
        trials, planned = trials_table(self.uri, self.sweep)
        if trials.empty:
            return self._answer
        known = trials["trial_key"].map(ended)
        trials["status"] = known.where(known.notna() & (trials["status"] == Status.RUNNING), trials["status"])
        trials = mark_best_in_cell(trials)  # a trial that ended a moment ago may now be its cell's choice
        chosen = trials[trials["is_best_in_cell"].astype(bool)]
        found = predictions.load(self.uri, chosen["run_id"].tolist(), Path(self.cache))
        decision = seeds.seeds_needed(trials, planned, found, self.spec.max_seeds, self.rope)
        if room is not None:
            budgets = {seeds.line_of_cell(c): c.budget for c in self.cells}
            epochs = int(self.spec.train.get("epochs", 1))
            cost = round_cost or every_epoch
            decision = seeds.within(decision, room, lambda line: cost(budgets[line], epochs))
        self.why = decision.why
        added = seeds.added_cells(self.cells, planned, decision.add)
        tracking = mlflow_experiment.prepare(self.uri, self.sweep, self.artifacts, added,
                                             self.spec.model_dump_json(indent=2))
        before = {c.key for c in self._answer}
        self._answer = [CellPlan(c.key, c.space, c.budget, self._config(c, tracking)) for c in added]
        new = [c for c in self._answer if c.key not in before]
        refused = [w for w in decision.refused if w not in self._told]
        if new or refused:
            # What the progress shows: why the sweep grows (its [k/total] counts the added cells' trials), or why a
            # comparison stays undecided under the cap (once). After a restart the cells added before it come
            # back from MLflow with no new reason: say so, not an empty line.
            lines = (decision.why if new else refused) or [f"{len(new)} cell(s) added before the restart, continued"]
            self._told.update(refused)
            print("[adaptive seeds] " + "\n[adaptive seeds] ".join(lines), flush=True)
        return self._answer

    def _config(self, cell: Cell, tracking) -> dict[str, Any]:
        return {**base_config(self.spec, cell, tracking.for_cell(self.sweep, cell), self.prepared.get(cell.dataset.key)),
                "storage": self.experiment_dir}
