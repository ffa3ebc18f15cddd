"""The searcher: owns the grid, keeps one Optuna study per cell, and hands Tune one trial at a time.

Why not Ray's OptunaSearch: it refuses `grid_search`, so the grid cannot sit in Tune's param space beside an Optuna
space. Here the grid lives in the searcher: `suggest` walks the cells round-robin (every cell progresses and the
cluster stays full; cell by cell under synchronous halving), asks that cell's study for hyperparameters
(ask/tell), and returns the trial's whole config.

The state it shares with the per-cell scheduler (`SweepState`) is saved with every experiment snapshot by this
searcher's `save` and restored in place by its `restore`: the rule is written in sweep/tune/state.py.
"""

from __future__ import annotations

import itertools
import math
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweep.plan.grid import trial_key, with_searched
from sweep.plan.spec import Dist
from sweep.tune.state import SweepState, TrialRecord
from trainables.contract import FAILED, SCORE, Status

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class CellPlan:
    """What the searcher needs of a cell: its key, space, budget, and the config its trials start from."""

    key: str
    space: dict[str, Dist]
    budget: int
    base_config: dict[str, Any]


SAMPLERS = ("grid", "random", "tpe", "qmc")


class CellSearcher(Searcher):
    """Every argument is a keyword, checked here.

    Args:
        cells: the planned cells, in the order their trials are handed out.
        state: the SweepState shared with the scheduler; saved and restored by this searcher.
        metric: the result key told to each cell's study; the contract's SCORE unless told otherwise.
        mode: "max" or "min": which way `metric` is better.
        sampler: how each cell's study picks hyperparameters: "grid" (the grid, centre first), "random", "tpe"
            or "qmc".
        grid_points: points per searched axis of the grid sampler.
        seed: the samplers' seed (each cell's study is seeded from it and the cell's key).
        cell_by_cell: hand out one cell's trials before the next cell's (for synchronous halving).
        extend: asked for more cells once every planned trial is handed out (adaptive seeds,
            sweep.tune.adaptive.SeedExtender): called with the trials seen ending ({trial key: status}) and whether
            none is running, it returns every cell added so far; the new ones are walked like the planned ones.
    """

    def __init__(
        self,
        *,
        cells: list[CellPlan],
        state: SweepState,
        metric: str = SCORE,
        mode: str = "max",
        sampler: str = "grid",
        grid_points: int = 3,
        seed: int = 0,
        cell_by_cell: bool = False,
        extend: Callable[[dict[str, Status], bool], list[CellPlan]] | None = None,
    ) -> None:
        if not cells:
            raise ValueError("a searcher needs at least one cell")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if int(grid_points) != grid_points or grid_points < 1:
            raise ValueError(f"grid_points must be a whole number >= 1, got {grid_points!r}")
        super().__init__(metric=metric, mode=mode)
        self.cells = cells
        self.state = state
        self.sampler = sampler
        self.grid_points = grid_points
        self.seed = seed
        # Synchronous halving decides a cell's rung once all of its trials report there: handing out one cell's
        # trials before the next cell's lets cells finish one after another, instead of every cell waiting until
        # every trial of the sweep has run to the first rung.
        self.cell_by_cell = cell_by_cell
        self.extend = extend

    # -- Tune's Searcher interface -------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        state = self.state
        for _ in range(len(self.cells)):
            cell = self.cells[state.cursor % len(self.cells)]
            index = state.suggested.get(cell.key, 0)
            if index >= cell.budget:
                state.cursor = (state.cursor + 1) % len(self.cells)
                continue
            if not self.cell_by_cell:
                state.cursor = (state.cursor + 1) % len(self.cells)
            study = self._study(cell)
            trial = study.ask(self._distributions(cell))
            state.suggested[cell.key] = index + 1
            state.trials[trial_id] = TrialRecord(cell.key, index, trial.number, dict(trial.params))
            return with_searched(cell.base_config, trial.params, trial_key(cell.key, index))
        return self._more_cells(trial_id) if self.extend is not None else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.state.trials.get(trial_id)
        value = result.get(self.metric)
        if record is not None and value is not None and not result.get(FAILED):
            record.value = float(value)  # a trial stopped while paused completes without a result: this stands

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        record = self.state.trials.get(trial_id)
        if record is None:
            return
        value = (result or {}).get(self.metric, None if result else record.value)
        failed = error or (result or {}).get(FAILED) or value is None or not math.isfinite(value)
        key = trial_key(record.cell, record.index)
        if failed:
            record.status = Status.FAILED
        elif key in self.state.stopped_early:
            record.status = Status.STOPPED_EARLY
        else:
            record.status = Status.FINISHED
        record.value = None if failed else float(value)
        study = self.state.studies[record.cell]
        # A trial that errored and is resumed completes twice; Optuna accepts one verdict per trial.
        if study.trials[record.number].state == TrialState.RUNNING:
            if failed:
                study.tell(record.number, state=TrialState.FAIL)
            else:
                study.tell(record.number, record.value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.state.replace_with(pickle.load(f))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _more_cells(self, trial_id: str) -> dict[str, Any] | str | None:
        """Every planned trial is out: add the cells `extend` asks for and go on, wait (None: Tune asks again)
        while trials run, else finish."""
        records = self.state.trials.values()
        ended = {trial_key(r.cell, r.index): r.status for r in records if r.status != Status.RUNNING}
        running = any(r.status == Status.RUNNING for r in records)
        known = {c.key for c in self.cells}
        fresh = [c for c in self.extend(ended, not running) if c.key not in known]
        if fresh:
            self.cells.extend(fresh)
            return self.suggest(trial_id)
        return None if running else Searcher.FINISHED

    def _study(self, cell: CellPlan) -> optuna.Study:
        if cell.key not in self.state.studies:
            direction = "maximize" if self.mode == "max" else "minimize"
            study = optuna.create_study(direction=direction, sampler=self._sampler(cell), study_name=cell.key)
            if self.sampler == "grid":
                # The grid is queued up front (centre-out, so the first trial of a cell, which async ASHA never
                # stops, sits mid-range). Optuna's GridSampler is avoided: it calls study.stop() once the grid is
                # used up, which fails outside study.optimize().
                for point in grid_order(cell.space, self.grid_points):
                    study.enqueue_trial(point)
            self.state.studies[cell.key] = study
        return self.state.studies[cell.key]

    def _sampler(self, cell: CellPlan) -> optuna.samplers.BaseSampler:
        seed = self.seed + _stable_hash(cell.key)
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, cell.budget))
        if self.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, scramble=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def _distributions(self, cell: CellPlan) -> dict[str, Any]:
        if self.sampler == "grid":
            return {n: CategoricalDistribution(d.grid(self.grid_points)) for n, d in cell.space.items()}
        return {name: to_optuna(dist) for name, dist in cell.space.items()}


def grid_order(space: dict[str, Dist], points: int) -> list[dict[str, Any]]:
    """Every grid point, each axis walked from its centre outwards."""
    axes = []
    for name in sorted(space):
        values = space[name].grid(points)
        middle = (len(values) - 1) / 2
        order = sorted(range(len(values)), key=lambda i: (abs(i - middle), i))
        axes.append([(name, values[i]) for i in order])
    return [dict(combo) for combo in itertools.product(*axes)]


def to_optuna(dist: Dist):
    if dist.choices is not None:
        return CategoricalDistribution(dist.choices)
    if dist.integer:
        return IntDistribution(int(dist.low), int(dist.high), log=dist.log)
    return FloatDistribution(dist.low, dist.high, log=dist.log)


CELL_SEED_RANGE = 100_000  # a cell's sampler seed is the search seed plus its key's hash below this


def _stable_hash(text: str) -> int:
    """The same for a cell key in every process and run (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode()) % CELL_SEED_RANGE
