"""Grid expansion: a spec becomes cells (task x dataset x backbone x method x fraction x seed), each with a
stable, readable key, its search space, its trial budget and the resources of its trials."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sweep.plan.spec import BackboneEntry, DatasetEntry, Dist, MethodEntry, SweepSpec

AUTO_GPU = -1.0  # a cell whose GPU share comes from calibration, until the plan sets it


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    workers: int

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": self.gpus, "num_workers": self.workers}


@dataclass(frozen=True)
class Cell:
    key: str
    task: str
    dataset: DatasetEntry
    backbone: BackboneEntry
    method: MethodEntry
    fraction: float
    seed: int
    space: dict[str, Dist]
    budget: int
    resources: Resources
    tags: dict[str, str] = field(default_factory=dict)

    def trial_key(self, index: int) -> str:
        return trial_key(self.key, index)


def trial_key(cell_key: str, index: int) -> str:
    """A trial's key: its cell and its position in the cell (what MLflow runs and checkpoints are found by)."""
    return f"{cell_key}/trial={index}"


def cell_key(task_short: str, dataset: str, backbone: str, method: str, fraction: float, seed: int) -> str:
    return f"{task_short}/{dataset}/{backbone}/{method}/frac={fraction:g}/seed={seed}"


def expand(spec: SweepSpec, task_short: str, spaces: dict[str, dict[str, Dist]]) -> list[Cell]:
    """All cells, in a stable order (the order of the spec's axes)."""
    combos = [
        (dataset, backbone, method, fraction, seed)
        for dataset in spec.datasets
        for backbone in spec.backbones
        for method, fraction, seed in itertools.product(spec.methods_for(backbone), spec.fractions,
                                                            spec.initial_seeds)
    ]
    cells = []
    for dataset, backbone, method, fraction, seed in combos:
        space = method_space(spaces, method.name)
        cells.append(
            Cell(
                key=cell_key(task_short, dataset.key, backbone.key, method.key, fraction, seed),
                task=spec.task,
                dataset=dataset,
                backbone=backbone,
                method=method,
                fraction=fraction,
                seed=seed,
                space=space,
                budget=trial_budget(spec, space),
                resources=method_resources(spec, method.name),
            )
        )
    return cells


def with_seed(cell: Cell, seed: int) -> Cell:
    """The same cell for another seed (adaptive seeds add these while the sweep runs)."""
    return dataclasses.replace(cell, seed=seed, key=f"{cell.key.rsplit('/seed=', 1)[0]}/seed={seed}")


def method_space(spaces: dict[str, dict[str, Dist]], method: str) -> dict[str, Dist]:
    for name in (method, method.partition(":")[0] + ":" if ":" in method else None, "default"):
        if name and name in spaces:
            return spaces[name]
    return {}


def grid_values(space: dict[str, Dist], points: int) -> list[dict[str, Any]]:
    """Every point of the grid sampler's grid, in a fixed order."""
    names = sorted(space)
    axes = [space[n].grid(points) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def grid_points(spec: SweepSpec) -> int:
    return spec.search.grid_points or spec.search.trials_per_cell


def trial_budget(spec: SweepSpec, space: dict[str, Dist]) -> int:
    """Trials per cell: as the spec says, but never more than a grid sampler has distinct points."""
    budget = spec.search.trials_per_cell
    if spec.search.sampler == "grid":
        budget = min(budget, max(1, len(grid_values(space, grid_points(spec)))))
    return budget


def method_resources(spec: SweepSpec, method: str) -> Resources:
    base = spec.resources
    own = base.per_method.get(method)
    gpus = own.gpus if own and own.gpus is not None else base.gpus_per_trial
    if gpus == "auto":  # replaced by the calibrated share when the plan is made (sweep.plan.cost.gpu_shares)
        gpus = AUTO_GPU
    memory = own.gpu_memory_gb if own and own.gpu_memory_gb is not None else base.gpu_memory_per_trial_gb
    if gpus != AUTO_GPU and gpus and memory and base.gpu_memory_gb:
        gpus = min(1.0, max(gpus, round(memory / base.gpu_memory_gb, 4))) if gpus <= 1 else gpus
    return Resources(
        cpus=(own.cpus if own and own.cpus is not None else base.cpus_per_trial),
        gpus=gpus,
        workers=(own.workers if own and own.workers is not None else base.workers_per_trial),
    )


def base_config(spec: SweepSpec, cell: Cell, tracking: dict[str, Any],
                prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain dict a trial of this cell receives, before the searcher fills in its hyperparameters
    (validated on the worker by trainables.config.TrialConfig)."""
    return {
        "task": cell.task,
        "seed": cell.seed,
        "data": {**data_config(cell.dataset, spec.image_size, cell.fraction, cell.tags.get("fallback_from")),
                 "prepared": prepared},
        "backbone": {"name": cell.backbone.name, "weights": cell.backbone.weights, "kwargs": cell.backbone.kwargs,
                     "id": cell.backbone.id},
        "method": {"name": cell.method.name, "knobs": dict(cell.method.knobs), "bn_mode": cell.method.bn_mode,
                   "id": cell.method.id},
        "train": dict(spec.train),
        "resources": cell.resources.as_dict(),
        "tracking": {**tracking, "cell_key": cell.key},
        "searched": {},
    }


def data_config(dataset: DatasetEntry, image_size: int, fraction: float = 1.0,
                fallback_from: str | None = None) -> dict[str, Any]:
    """The `data` section of a trial config (trainables.config.DataConfig) for a dataset entry."""
    return {
        "name": dataset.name,
        "id": dataset.key,
        "root": dataset.root,
        "options": dict(dataset.options),
        "fraction": fraction,
        "image_size": image_size,
        "split_seed": dataset.split_seed,
        "val_share": dataset.val_share,
        "test_share": dataset.test_share,
        "on_corrupt": dataset.on_corrupt,
        "on_duplicate": dataset.on_duplicate,
        "max_train_images": dataset.max_train_images,
        "fallback_from": fallback_from,
    }


def with_searched(base: dict[str, Any], searched: dict[str, Any], trial_key: str) -> dict[str, Any]:
    """A trial's config: the cell's base config with the searched values in place (`knobs.X` go to the method,
    everything else to `train`)."""
    config = copy.deepcopy(base)
    for name, value in searched.items():
        if name.startswith("knobs."):
            config["method"]["knobs"][name.removeprefix("knobs.")] = value
        else:
            config["train"][name] = value
    config["searched"] = dict(searched)
    config["tracking"]["trial_key"] = trial_key
    return config


def grid_order(space: dict[str, Dist], points: int) -> list[dict[str, Any]]:
    """Every grid point, each axis walked from its centre outwards."""
    axes = []
    for name in sorted(space):
        values = space[name].grid(points)
        middle = (len(values) - 1) / 2
        order = sorted(range(len(values)), key=lambda i: (abs(i - middle), i))
        axes.append([(name, values[i]) for i in order])
    return [dict(combo) for combo in itertools.product(*axes)]


# -- learning rates beyond a range's edge (search rounds, sweep/tune/rounds.py, and their worst-case cost) --------

LR = "lr"
EDGE_HIGH, EDGE_LOW = "high", "low"


def range_edge(value: Any, tried: Iterable[Any]) -> str:
    """The edge check of every searched numeric knob, the learning rate's and the others' (the Playbook's "best
    points at the edge of the search space"): EDGE_HIGH (EDGE_LOW) when `value`, the chosen trial's, is the largest
    (smallest) of the values its cell `tried`, and those span more than one value; else ''. A knob with one value
    tried has no range to be at the edge of; a non-numeric one (a choice of names) has no order. The search rounds
    widen the learning rate's range on it (sweep/tune/rounds.py); every other knob's edge is reported only."""
    if not _numeric(value):
        return ""
    values = [float(v) for v in tried if _numeric(v)]
    if len(values) < 2 or math.isclose(min(values), max(values), rel_tol=1e-9):
        return ""
    if math.isclose(float(value), max(values), rel_tol=1e-9):
        return EDGE_HIGH
    return EDGE_LOW if math.isclose(float(value), min(values), rel_tol=1e-9) else ""


def _numeric(value: Any) -> bool:
    # A bool is an int to Python, but True/False are two choices, not two ends of a range.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def lr_step(lr: Dist, grid_points: int, budget: int, sampler: str) -> float:
    """A cell's own log spacing of learning rates, as a factor: its grid's step, or for the other samplers its
    planned trials spread evenly over its range's decades."""
    ratio = lr.high / lr.low
    if sampler == "grid":
        n = lr.points or grid_points
        return ratio ** (1 / (n - 1)) if n > 1 else 10.0
    return ratio ** (1 / budget) if budget > 1 else 10.0


def lrs_beyond(edge: float, step: float, upwards: bool, limits: tuple[float, float],
               tried: list[float] = ()) -> list[float]:
    """The learning rates one decade beyond `edge` at `step` (at least one), inside `limits`, not yet tried."""
    per_decade = max(1, round(1 / math.log10(step))) if step > 1 else 1
    sign = 1 if upwards else -1
    new = [float(f"{edge * step ** (sign * k):.4g}") for k in range(1, per_decade + 1)]
    low, high = limits
    return sorted(v for v in new if low * (1 - 1e-9) <= v <= high * (1 + 1e-9) and v not in tried)


def extension_round_size(space: dict[str, Dist], lrs: list[float], grid_points: int, sampler: str) -> int:
    """Trials of an extension round with these new learning rates: the grid's points (with every other searched
    axis), or one trial per learning rate for the other samplers."""
    if sampler == "grid":
        return len(grid_order({**space, LR: Dist(choices=lrs)}, grid_points)) if lrs else 0
    return len(lrs)


def most_added_trials(space: dict[str, Dist], budget: int, grid_points: int, sampler: str,
                      limits: tuple[float, float], max_extensions: int) -> int:
    """The most trials a cell's extension rounds can add: every order of directions tried, each round one decade
    further from the range tried so far (the search's own rule), inside the limits."""
    lr = space.get(LR)
    if lr is None or lr.choices is not None or max_extensions < 1:
        return 0
    step = lr_step(lr, grid_points, budget, sampler)
    start = lr.grid(grid_points) if sampler == "grid" else [lr.low, lr.high]
    if sampler != "grid":  # the trials' edges lie anywhere inside the range: no round is counted as clipped
        limits = (0.0, math.inf)

    def most(low: float, high: float, rounds_left: int) -> int:
        if rounds_left == 0:
            return 0
        best = 0
        for upwards in (True, False):
            new = lrs_beyond(high if upwards else low, step, upwards, limits)
            if new:
                size = extension_round_size(space, new, grid_points, sampler)
                best = max(best, size + most(min(low, *new), max(high, *new), rounds_left - 1))
        return best

    return most(min(start), max(start), max_extensions)
