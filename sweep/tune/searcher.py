"""The searcher: owns the grid, keeps one Optuna study per cell, and hands Tune one trial at a time.

Why not Ray's OptunaSearch: it refuses `grid_search`, so the grid cannot sit in Tune's param space beside an Optuna
space. Here the grid lives in the searcher: `suggest` walks the cells round-robin (every cell progresses and the
cluster stays full; cell by cell under synchronous halving), asks that cell's study for hyperparameters
(ask/tell), and returns the trial's whole config.

The state it shares with the per-cell scheduler (`SweepState`) is saved with every experiment snapshot by this
searcher's `save` and restored in place by its `restore`: the rule is written in sweep/tune/state.py.

A cell's search does not stop at its planned round (sweep/tune/rounds.py decides what comes next): when the
cell's trials have all ended and its chosen trial sits at an edge of the learning rates tried, the cell gets
another round beyond that edge; when its chosen trial was still improving, one more trial with twice the epochs.
Rounds are part of the saved state, so a resumed sweep finishes a round without rerunning anything.
"""

from __future__ import annotations

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

from sweep.plan.grid import grid_order, trial_key, with_searched
from sweep.plan.spec import Dist
from sweep.tune import rounds
from sweep.tune.state import ROUND_DOUBLING, ROUND_INITIAL, CellSearch, Round, SweepState, TrialRecord
from trainables.contract import (
    ENDED,
    EPOCH,
    FAILED,
    ROUND_KIND_TAG,
    ROUND_TAG,
    SCORE,
    VAL_BEST_LOSS,
    VAL_IMAGES,
    Status,
)

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
            sweep.tune.adaptive.SeedExtender): called with the trials seen ending ({trial key: status}), whether
            none is running, the trial-epochs max_trial_epochs leaves (None: no cap) and round_cost, it returns
            every cell added so far; the new ones are walked like the planned ones.
            Asked once every cell's search rounds are done.
        extend_range: widen a cell's learning-rate range beyond the edge its chosen trial sits at (rounds.py).
        lr_limits: (low, high): no learning rate outside them is ever tried by an extension.
        max_extensions: extension rounds per cell at most.
        max_epoch_doublings: rounds per cell that run the chosen configuration again with twice the epochs.
        flat_tolerance: scores closer than this (SCORE units) count as equal: a flat range, a rung decided by a tie;
            a cell whose trials report their validation images uses their score's standard error where larger
            (trainables.contract.score_tolerance).
        max_trial_epochs: the most trial-epochs the whole sweep may take, its planned rounds, search rounds and
            added cells together (None: no cap). A round or an added cell is taken only while the most everything
            taken so far can cost, plus the most it can, stays within it; a cell whose round is refused ends with
            its range edge or its still-improving choice as it stands, and says why.
        round_cost: the most trial-epochs a round of (trials, epochs) can take under the sweep's scheduler
            (sweep.plan.spec.SchedulerSpec.most_trial_epochs); default trials x epochs.
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
        extend: Callable[[dict[str, Status], bool, int | None, Callable[[int, int], int]], list[CellPlan]]
        | None = None,
        extend_range: bool = False,
        lr_limits: tuple[float, float] = (1e-6, 1.0),
        max_extensions: int = 2,
        max_epoch_doublings: int = 0,
        flat_tolerance: float = rounds.FLAT_TOLERANCE,
        max_trial_epochs: int | None = None,
        round_cost: Callable[[int, int], int] | None = None,
    ) -> None:
        if not cells:
            raise ValueError("a searcher needs at least one cell")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if int(grid_points) != grid_points or grid_points < 1:
            raise ValueError(f"grid_points must be a whole number >= 1, got {grid_points!r}")
        if not 0 < lr_limits[0] < lr_limits[1]:
            raise ValueError(f"lr_limits must be (low, high) with 0 < low < high, got {lr_limits!r}")
        for name, value in (("max_extensions", max_extensions), ("max_epoch_doublings", max_epoch_doublings)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if max_trial_epochs is not None and (int(max_trial_epochs) != max_trial_epochs or max_trial_epochs < 1):
            raise ValueError(f"max_trial_epochs must be a whole number >= 1 or None, got {max_trial_epochs!r}")
        super().__init__(metric=metric, mode=mode)
        self.max_trial_epochs = max_trial_epochs
        self.round_cost = round_cost or every_epoch
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
        self.rules = rounds.Rules(extend=extend_range, lr_limits=(float(lr_limits[0]), float(lr_limits[1])),
                                  max_extensions=int(max_extensions), max_doublings=int(max_epoch_doublings),
                                  flat_tolerance=flat_tolerance, mode=mode)
        self._by_key = {cell.key: cell for cell in cells}

    @property
    def idle(self) -> bool:
        """Nothing to hand out now (cells may still get another round once their running trials end)."""
        return not self._open_cells()

    # -- Tune's Searcher interface -------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        state = self.state
        # A cell's added round goes first: its cell was otherwise done, and finishing cells one after another
        # is what cell-by-cell hand-out is for.
        for cell in self._open_cells():
            if state.suggested.get(cell.key, 0) >= self._initial(cell).size:
                return self._hand_out(cell, trial_id)
        for _ in range(len(self.cells)):
            cell = self.cells[state.cursor % len(self.cells)]
            if state.suggested.get(cell.key, 0) >= self._search(cell).budget:
                state.cursor = (state.cursor + 1) % len(self.cells)
                continue
            if not self.cell_by_cell:
                state.cursor = (state.cursor + 1) % len(self.cells)
            return self._hand_out(cell, trial_id)
        if not all(self._search(cell).done for cell in self.cells):
            return None  # cells wait for their trials to end before their next round is known: ask again later
        return self._more_cells(trial_id) if self.extend is not None else Searcher.FINISHED

    def _hand_out(self, cell: CellPlan, trial_id: str) -> dict[str, Any]:
        state = self.state
        index = state.suggested.get(cell.key, 0)
        search = self._search(cell)
        number = next(i for i in range(len(search.rounds) - 1, -1, -1) if search.rounds[i].first <= index)
        this = search.rounds[number]
        if this.kind == ROUND_DOUBLING:
            # The chosen configuration again, longer: not a new point of the cell's study (it never sees it).
            params, study_number = dict(this.params or {}), -1
        elif number and self.sampler == "grid":
            # An extension's new grid points. Not through the study: Optuna's categorical distributions cannot
            # grow, and the grid sampler's study is only its queue.
            params, study_number = grid_order(this.space, self.grid_points)[index - this.first], -1
        else:
            study = self._study(cell)
            trial = study.ask(self._distributions(this.space))
            params, study_number = dict(trial.params), trial.number
        state.suggested[cell.key] = index + 1
        state.trials[trial_id] = TrialRecord(cell.key, index, study_number, params, round=number)
        search.trial_ids.append(trial_id)
        config = with_searched(cell.base_config, params, trial_key(cell.key, index))
        config["tracking"]["tags"] = {**config["tracking"].get("tags", {}), ROUND_TAG: str(number),
                                      ROUND_KIND_TAG: this.kind}
        if this.epochs is not None:
            config["train"]["epochs"] = this.epochs
        return config

    def _open_cells(self) -> list[CellPlan]:
        return [cell for cell in self.cells if self.state.suggested.get(cell.key, 0) < self._search(cell).budget]

    def _initial(self, cell: CellPlan) -> Round:
        return self._search(cell).rounds[0]

    def _search(self, cell: CellPlan) -> CellSearch:
        if cell.key not in self.state.search:
            self.state.search[cell.key] = CellSearch([Round(ROUND_INITIAL, 0, cell.budget, dict(cell.space))],
                                                     done=not self.rules.may_add_rounds)
        return self.state.search[cell.key]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.state.trials.get(trial_id)
        value = result.get(self.metric)
        if record is not None and value is not None and not result.get(FAILED):
            record.value = float(value)  # a trial stopped while paused completes without a result: this stands
            loss = result.get(VAL_BEST_LOSS)
            record.best_loss = None if loss is None else float(loss)
            if result.get(EPOCH) is not None:
                record.scores[int(result[EPOCH])] = float(value)
            if result.get(VAL_IMAGES) is not None:
                record.val_images = int(result[VAL_IMAGES])

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
        if not failed and (result or {}).get(VAL_BEST_LOSS) is not None:
            record.best_loss = float(result[VAL_BEST_LOSS])
        # A trial that errored and is resumed completes twice; Optuna accepts one verdict per trial.
        if record.number >= 0 and self.state.studies[record.cell].trials[record.number].state == TrialState.RUNNING:
            study = self.state.studies[record.cell]
            if failed:
                study.tell(record.number, state=TrialState.FAIL)
            else:
                study.tell(record.number, record.value)
        self._after_trial(record.cell)

    def _after_trial(self, key: str) -> None:
        """Once every trial of a cell handed out so far has ended, decide its next round (or that it is done)."""
        if key not in self._by_key:  # a cell added since (adaptive seeds)
            self._by_key = {c.key: c for c in self.cells}
        cell = self._by_key.get(key)
        if cell is None:
            return
        search = self._search(cell)
        records = [self.state.trials[t] for t in search.trial_ids]
        if (search.done and search.edge) or self.state.suggested.get(key, 0) < search.budget:
            return
        if len(records) < search.budget or any(r.status not in ENDED for r in records):
            return
        added = rounds.next_round(search, records, self.state, key, self.rules, self.grid_points, self.sampler,
                                  cell.base_config.get("train", {}).get("epochs"))
        room = self.room() if added is not None else None
        if room is not None and self._cost(cell, added) > room:
            rounds.refuse(search, added, f"search.max_trial_epochs ({self.max_trial_epochs:,}) would be exceeded")
            added = None
        if added is not None:
            search.rounds.append(added)
        else:
            search.done = True

    def room(self) -> int | None:
        """Trial-epochs left under max_trial_epochs once everything taken so far costs the most it can: every
        cell's rounds (a cell not yet started: its planned round; after a restore, a cell added before it that
        the extender has not returned yet: its rounds in the restored state). None: no cap."""
        if self.max_trial_epochs is None:
            return None
        taken = 0
        for cell in self.cells:
            search = self.state.search.get(cell.key)
            taken += sum(self._cost(cell, r) for r in search.rounds) if search else self.cell_cost(cell)
        known = {cell.key for cell in self.cells}
        for key, search in self.state.search.items():
            if key not in known:
                taken += sum(self._cost(self.cells[0], r) for r in search.rounds)  # the spec's epochs, as any cell
        return self.max_trial_epochs - taken

    def cell_cost(self, cell: CellPlan) -> int:
        """The most a cell's planned round can cost (an added cell's too)."""
        return self._cost(cell, Round(ROUND_INITIAL, 0, cell.budget, {}))

    def _cost(self, cell: CellPlan, this: Round) -> int:
        return self.round_cost(this.size, this.epochs or int(cell.base_config.get("train", {}).get("epochs") or 1))

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
        fresh = [c for c in self.extend(ended, not running, self.room(), self.round_cost) if c.key not in known]
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
                # used up, which fails outside study.optimize(). An extension round queues its own points.
                for point in grid_order(cell.space, self.grid_points):
                    study.enqueue_trial(point)
            self.state.studies[cell.key] = study
        return self.state.studies[cell.key]

    def _sampler(self, cell: CellPlan) -> optuna.samplers.BaseSampler:
        seed = self.seed + _stable_hash(cell.key)
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, cell.budget))
        if self.sampler == "qmc":
            # An extension round samples a widened range, which QMC's fixed initial space cannot: those trials are
            # drawn independently, on purpose (no warning).
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
        return optuna.samplers.RandomSampler(seed=seed)

    def _distributions(self, space: dict[str, Dist]) -> dict[str, Any]:
        if self.sampler == "grid":
            return {n: CategoricalDistribution(d.grid(self.grid_points)) for n, d in space.items()}
        return {name: to_optuna(dist) for name, dist in space.items()}


def every_epoch(trials: int, epochs: int) -> int:
    """The most a round can cost when nothing stops its trials early."""
    return trials * epochs


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
