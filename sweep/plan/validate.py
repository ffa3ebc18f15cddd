"""Validate before you spend: a spec becomes a `Plan` (every cell checked) or a SpecError listing every problem.

`make_plan` starts no Ray and creates no sweep files. Checks: the task and its training settings, search spaces
are valid (every searched name a train setting or knobs.*), every method exists and fits every backbone it is
crossed with (built on PyTorch's meta device, so no memory and no weights), the backbones' pretrained weights can
be loaded, and every dataset's files are where its layout says (a dataset that can download itself, like
MedMNIST, may do so; or the spec allows the synthetic fallback). With `gpus_per_trial: auto` it also sets each
cell's GPU share from the calibration cache, calibrating (and adding to that cache) when this machine has the
sweep's GPU. Whether the storage is writable is checked by sweep.store.storage (`preflight`), not here.
`prepare_data` (sweep/plan/datasets.py), run after the plan, does write: each dataset's manifest and image cache (uploaded to remote
storage when there is one).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweep.plan.grid import AUTO_GPU, Cell, expand, grid_points
from sweep.plan.spec import (
    DatasetEntry,
    Dist,
    SpecError,
    SweepSpec,
    format_validation_error,
    load_method_spaces,
)
from trainables.contract import Selection

# The head a dry run counts when a dataset's classes are unknown (only its files could tell, and they are not here).
ASSUMED_CLASSES = 2


@dataclass
class Plan:
    spec: SweepSpec
    spec_path: Path
    cells: list[Cell]
    task_short: str
    selection: Selection  # what trials are chosen on and reported with (the sweep compares their `score`)
    max_epochs: int
    grid_points: int
    notes: list[str] = field(default_factory=list)  # loud warnings (e.g. synthetic fallback)
    missing: list[str] = field(default_factory=list)  # data or weights not found (dry runs list them)
    classifies: bool = False  # the task trains a classifier, whose head is sized by its dataset's classes
    # dataset key -> its number of classes (from its files, else what its publisher fixed; None: only the files
    # can tell, and they are not here)
    classes: dict[str, int | None] = field(default_factory=dict)
    # (backbone, method, classes) -> (trainable, total) parameters, the head sized for that many classes
    params: dict[tuple[str, str, int | None], tuple[int, int]] = field(default_factory=dict)

    @property
    def total_trials(self) -> int:
        return sum(c.budget for c in self.cells)

    @property
    def planned_trial_epochs(self) -> int:
        """The most the planned cells can take: each one's planned round at its scheduler's most (what the
        searcher reserves for it under search.max_trial_epochs)."""
        return sum(self.spec.scheduler.most_trial_epochs(c.budget, self.max_epochs) for c in self.cells)


def make_plan(spec: SweepSpec, spec_path: Path, data_root: str | None, allow_missing: bool = False) -> Plan:
    """Check everything a sweep needs; with allow_missing (dry runs) missing data/weights are listed, not fatal."""
    from trainables.tasks import get_task

    problems: list[str] = []
    try:
        task = get_task(spec.task)
    except ValueError as e:
        raise SpecError(str(e)) from None
    try:
        train = task.train_schema.model_validate(spec.train)
    except ValidationError as e:
        raise SpecError(f"train: invalid settings:\n{format_validation_error(e)}") from None

    spaces = load_method_spaces(spec, spec_path)
    cells = expand(spec, task.short, spaces)
    plan = Plan(spec, spec_path, cells, task.short, task.selection(train), task.max_epochs(train), grid_points(spec),
                classifies=task.needs_classes)

    for cell in cells:
        if not cell.space:
            problems.append(f"method {cell.method.name!r}: no search space (add it to the spaces file or spec)")
        for name, dist in cell.space.items():
            if name.startswith("knobs."):
                continue
            if name not in task.train_schema.model_fields:
                problems.append(f"method {cell.method.name!r}: searched {name!r} is neither a train setting nor "
                                "knobs.*")
                continue
            problems += _check_searched_values(task.train_schema, spec.train, cell.method.name, name, dist)
    problems += _check_rungs(spec, plan.max_epochs)

    if data_root and not Path(data_root).expanduser().is_dir():
        # Named by the user, so it must be there: a typo would otherwise be ignored where a dataset has other
        # places to come from (MedMNIST's download cache, the copy shipped with the project).
        (plan.missing if allow_missing else problems).append(
            f"data root {data_root} (--data-root or MEDPEFT_DATA_ROOT) does not exist or is not a folder; name the "
            "folder that holds the datasets")
    datasets = {}
    for entry in spec.datasets:
        try:
            datasets[entry.key] = _resolve_dataset(entry, data_root, plan)
        except SpecError as e:
            (plan.missing if allow_missing else problems).append(str(e))
            datasets[entry.key] = entry
        plan.classes[datasets[entry.key].key] = _class_count(datasets[entry.key])

    problems += _check_backbones_and_methods(spec, plan, task, allow_missing)
    problems = list(dict.fromkeys(problems))
    if problems:
        raise SpecError("the sweep cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    plan.cells = [_with_dataset(c, datasets[c.dataset.key], task.short) for c in cells]
    if any(c.resources.gpus == AUTO_GPU for c in plan.cells):
        _calibrated_gpu_shares(plan)
    if spec.scheduler.type == "halving" and any(c.resources.workers > 1 for c in plan.cells):
        # A paused multi-worker trial's TorchTrainer does not stop with it (its workers train on and hold their
        # CPUs/GPUs), so its cell would wait for it forever.
        plan.notes.append("multi-worker trials cannot wait paused at a rung: this sweep stops trials early with "
                          "asynchronous ASHA per cell instead of synchronous halving.")
        plan.spec = spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"type": "asha"})})
    if spec.scheduler.type == "halving" and spec.search.sampler == "tpe":
        plan.notes.append("scheduler halving with sampler tpe: every trial of a cell starts before any finishes, so "
                          "TPE learns nothing from its cell's results (it samples at random). Use scheduler.type: "
                          "asha to let TPE learn, or sampler: grid/qmc with halving.")
    cap = spec.search.max_trial_epochs
    if cap is not None and cap < plan.planned_trial_epochs:
        raise SpecError(f"search.max_trial_epochs ({cap:,}) is less than the {plan.planned_trial_epochs:,} "
                        "trial-epochs the planned cells can take: raise it to at least that, or plan fewer cells, "
                        "trials or epochs")
    return plan


def _check_searched_values(schema: type[BaseModel], train: dict[str, Any], method: str, name: str,
                           dist: Dist) -> list[str]:
    """Every value a train setting can be searched at must be a valid value of that setting (a learning rate > 0,
    ...): checked by the task's own schema, so a bad one is an error now rather than a failed trial."""
    values = dist.choices if dist.choices is not None else [dist.low, dist.high]
    problems = []
    for value in values:
        try:
            schema.model_validate({**train, name: value})
        except ValidationError as e:
            why = "; ".join(err["msg"] for err in e.errors() if err["loc"][:1] == (name,))
            if why:
                problems.append(f"method {method!r}: searched {name} {value!r} is not a valid {name} ({why}); fix "
                                f"its search space (search.spaces.{method}.{name} in the spec, or the spaces file)")
    return problems


def _check_rungs(spec: SweepSpec, max_epochs: int) -> list[str]:
    """Early stopping compares a cell's trials at its rungs (grace_period, then x reduction_factor): a first rung
    at or after the last epoch compares nothing and stops nothing."""
    scheduler = spec.scheduler
    if scheduler.type == "fifo" or scheduler.grace_period < max_epochs:
        return []
    return [f"scheduler.grace_period ({scheduler.grace_period}) must be smaller than train.epochs ({max_epochs}): "
            f"{scheduler.type} compares a cell's trials first at epoch grace_period, and a trial ends at epoch "
            f"{max_epochs}, so no trial would ever be stopped early. Lower scheduler.grace_period, raise "
            "train.epochs, or use scheduler.type: fifo"]


def _class_count(entry: DatasetEntry) -> int | None:
    from trainables.data import DatasetError, get_source

    try:
        return get_source(entry.name, entry.root, entry.options).class_count()
    except DatasetError:  # an unknown dataset or bad options: already a problem of the plan
        return None


def _calibrated_gpu_shares(plan: Plan) -> None:
    """`gpus_per_trial: auto`: each cell's GPU share from its group's calibrated peak memory on the sweep's GPU type
    (calibrated now when this machine has that GPU and the group is not cached)."""
    from sweep.plan.cost import MEMORY_MARGIN, gpu_shares, group_of, measure_groups, read_cache

    res = plan.spec.resources
    device = res.gpu_type
    local = _local_gpu()
    if device is None and local is None:
        raise SpecError("gpus_per_trial: auto needs to know the GPU: set resources.gpu_type (as torch names it, e.g. "
                        "'NVIDIA H100 80GB HBM3') and calibrate on it (python -m sweep.calibrate --config SPEC on a "
                        "GPU node), or plan on a machine with that GPU")
    device = device or local
    auto = [c for c in plan.cells if c.resources.gpus == AUTO_GPU]
    measured = read_cache(device)
    missing = [c for c in auto if group_of(plan.spec, c).key not in measured]
    if missing and device == local:
        measured |= measure_groups([group_of(plan.spec, c) for c in missing], "cuda")[1]
    elif missing:
        raise SpecError(f"gpus_per_trial: auto: {len(missing)} (backbone, method) groups have no calibration on "
                        f"{device!r} (first: {missing[0].backbone.key} / {missing[0].method.key}); run python -m "
                        "sweep.calibrate --config SPEC on that GPU first")
    card = res.gpu_memory_gb * 1024 if res.gpu_memory_gb else None
    shares = gpu_shares(dataclasses.replace(plan, cells=auto), measured, card)
    plan.cells = [dataclasses.replace(c, resources=dataclasses.replace(
        c.resources, gpus=shares[(c.backbone.key, c.method.key)])) if c.resources.gpus == AUTO_GPU else c
        for c in plan.cells]
    listed = ", ".join(f"{backbone} / {method}: {share:g}" for (backbone, method), share in sorted(shares.items()))
    plan.notes.append(f"GPU share per trial from its calibrated memory on {device} (+{MEMORY_MARGIN:.0%}): {listed}")


def _local_gpu() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from trainables.throughput import device_name

    return device_name(torch.device("cuda"))


def _resolve_dataset(entry: DatasetEntry, data_root: str | None, plan: Plan) -> DatasetEntry:
    """Find the dataset's files (root: the entry's own, relative to --data-root, else --data-root)."""
    from trainables.data import DatasetError, get_source

    root = entry.root
    if root and not os.path.isabs(os.path.expanduser(root)) and data_root:
        root = os.path.join(data_root, root)
    root = root or data_root
    root = str(Path(root).expanduser().resolve()) if root else None
    try:
        located = get_source(entry.name, root, entry.options).locate()
    except DatasetError as e:
        if entry.on_missing != "synthetic":
            raise SpecError(str(e)) from None
        options = _synthetic_like(entry)
        note = (
            f"DATA NOT FOUND: {entry.key} ({e}). Running on the built-in SYNTHETIC dataset instead "
            "(spec says on_missing: synthetic). These results say nothing about medical images; pass --data-root "
            "to use the real data."
        )
        plan.notes.append(note)
        return DatasetEntry(name="synthetic", id=f"synthetic-{entry.key}", options=options)
    return entry.model_copy(update={"root": located.root or None})


def _synthetic_like(entry: DatasetEntry) -> dict[str, Any]:
    """Synthetic options shaped like the missing dataset where we know its shape (MedMNIST subsets)."""
    options: dict[str, Any] = {}
    if entry.name == "medmnist":
        try:
            from medmnist import INFO

            info = INFO[entry.options.get("subset", "breastmnist")]
            options = {"num_classes": len(info["label"]), "channels": info["n_channels"],
                       "size": int(entry.options.get("size", 28))}
        except (ImportError, KeyError):
            pass
    return options


def _with_dataset(cell: Cell, dataset: DatasetEntry, task_short: str) -> Cell:
    if dataset is cell.dataset:
        return cell
    tags = dict(cell.tags)
    if dataset.name == "synthetic" and cell.dataset.name != "synthetic":
        tags["fallback_from"] = cell.dataset.key
    key = cell.key.replace(f"{task_short}/{cell.dataset.key}/", f"{task_short}/{dataset.key}/", 1)
    return dataclasses.replace(cell, dataset=dataset, key=key, tags=tags)


def _check_backbones_and_methods(spec: SweepSpec, plan: Plan, task, allow_missing: bool) -> list[str]:
    """Every backbone's weights can be loaded, and every method fits every backbone it is crossed with (applied
    to the backbone built without weights); records each pair's parameter counts."""
    from trainables.backbones import WeightsError
    from trainables.methods import MethodError

    problems = []
    class_counts = sorted(set(plan.classes.values()), key=lambda n: (n is None, n))
    for backbone in spec.backbones:
        built = True
        for method in spec.methods_for(backbone):
            try:
                for classes in class_counts:  # the head is sized for each dataset's classes
                    prepared = task.probe(backbone.name, method.name, method.knobs, method.bn_mode, spec.image_size,
                                          num_classes=classes or ASSUMED_CLASSES, weights=backbone.weights,
                                          **backbone.kwargs)
                    plan.params[(backbone.key, method.key, classes)] = (prepared.trainable_params,
                                                                        prepared.total_params)
            except MethodError as e:
                problems.append(str(e))
            except (ValueError, RuntimeError, TypeError, OSError, ImportError) as e:
                problem = f"backbone {backbone.name!r} cannot be built for task {spec.task!r}: {e}"
                if backbone.kwargs:  # a part the user pointed at (e.g. a text encoder's folder) says it better
                    try:
                        task.check_weights(backbone.name, backbone.weights, backbone.kwargs)
                    except WeightsError as weights:
                        problem = str(weights)
                problems.append(problem)
                built = False
                break
        if not built:  # said alone: where the weights of a model that cannot exist would come from is beside the point
            continue
        try:
            task.check_weights(backbone.name, backbone.weights, backbone.kwargs)
        except WeightsError as e:
            (plan.missing if allow_missing else problems).append(str(e))
    return problems
