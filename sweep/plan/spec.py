"""Sweep specs: YAML files that say what to run. Loaded, overridden from the command line, and validated here.

A spec names the task, the grid axes (datasets, backbones, methods, data fractions, seeds), the training
settings, how to search each method's hyperparameters in every cell, the scheduler, and per-trial resources.
Per-method search spaces come from `search_spaces/methods.yaml` unless the spec overrides them.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweep.errors import InputError

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPEC = SPACES_DIR / "quickstart.yaml"
DEFAULT_METHOD_SPACES = SPACES_DIR / "methods.yaml"


# A sweep's name (and an arm's id) becomes a folder in the storage and an MLflow experiment: no path separators,
# no leading dot, so it can never point outside the storage.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SpecError(InputError):
    """A bad sweep spec, or data or weights it names that are not usable. The CLI prints it and exits with code 2
    (storage and MLflow problems are sweep.errors.StorageError)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetEntry(_Model):
    name: str
    id: str | None = None  # how the dataset appears in cell keys (default: its subset or name)
    root: str | None = None  # absolute, or relative to --data-root
    options: dict[str, Any] = Field(default_factory=dict)
    on_missing: Literal["error", "synthetic"] = "error"
    on_corrupt: Literal["error", "skip"] = "error"  # images that cannot be decoded
    on_duplicate: Literal["error", "drop"] = "error"  # the same image in two splits
    # Split of datasets without an official one: stratified by label, grouped by patient/lesion, seeded.
    split_seed: int = 0
    val_share: float = Field(0.1, ge=0.0, lt=1.0)
    test_share: float = Field(0.2, gt=0.0, lt=1.0)
    # A fixed, stratified subset of the training split (chosen with split_seed) that the fractions are taken
    # of: bounds the cost of a study on a large dataset; validation and test stay whole.
    max_train_images: int | None = Field(None, ge=2)

    @property
    def key(self) -> str:
        return self.id or str(self.options.get("subset") or self.name)


class MethodEntry(_Model):
    name: str
    knobs: dict[str, Any] = Field(default_factory=dict)
    bn_mode: Literal["train", "eval"] | None = None
    id: str | None = None

    @property
    def key(self) -> str:
        return self.id or self.name


def _names_to_entries(value: Any) -> Any:
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class BackboneEntry(_Model):
    name: str
    weights: str = "default"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    # Methods crossed with this backbone (default: the spec's `methods`), e.g. ViT-only methods for a ViT.
    methods: list[MethodEntry] | None = None

    _methods_may_be_names = field_validator("methods", mode="before")(_names_to_entries)

    @property
    def key(self) -> str:
        return self.id or self.name


class Dist(_Model):
    """A searched dimension: a float/int range (log-uniform by default) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = True
    integer: bool = False
    points: int | None = Field(None, ge=1)  # grid sampler: how many log/linear steps from low to high
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Dist:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give a list of choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be smaller than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low:g})")
        return self

    def grid(self, points: int) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        n = self.points or points
        if n == 1:
            values = [math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2]
        elif self.log:
            step = (math.log(self.high) - math.log(self.low)) / (n - 1)
            values = [math.exp(math.log(self.low) + i * step) for i in range(n)]
        else:
            values = [self.low + i * (self.high - self.low) / (n - 1) for i in range(n)]
        values = [float(f"{v:.4g}") for v in values]
        return sorted({round(v) for v in values}) if self.integer else values


def parse_dist(value: Any) -> Dist:
    if isinstance(value, Dist):
        return value
    if isinstance(value, list):
        return Dist(choices=value)
    if isinstance(value, dict):
        return Dist.model_validate(value)
    return Dist(choices=[value])  # a fixed value


class SearchSpec(_Model):
    sampler: Literal["grid", "tpe", "qmc", "random"] = "grid"
    trials_per_cell: int = Field(4, ge=1)
    grid_points: int | None = Field(None, ge=1)  # steps per range for the grid sampler (default: trials_per_cell)
    seed: int = 0
    spaces_file: str | None = None  # per-method spaces (default: search_spaces/methods.yaml)
    # Per-method overrides of the spaces file: {method: {lr: {low, high}, knobs: {r: [4, 8]}}}
    spaces: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A cell whose chosen learning rate is the highest or lowest it tried runs another round beyond that edge
    # (sweep/tune/rounds.py), never outside lr_limits, at most max_extensions rounds; a chosen trial still
    # improving at its last epoch runs again with twice the epochs, at most max_epoch_doublings times.
    extend: bool = True
    lr_limits: tuple[float, float] = (1e-6, 1.0)
    max_extensions: int = Field(2, ge=0)
    max_epoch_doublings: int = Field(1, ge=0)
    # Scores (SCORE units) closer than this are equal: a flat range, a chosen trial no longer improving.
    flat_tolerance: float = Field(0.01, ge=0)
    # The most trial-epochs the whole sweep may take: its planned grid, search rounds and added seeds' cells
    # together (None: no cap). What adapts is limited by max_extensions, max_epoch_doublings and seeds.max; this
    # bounds it all at once, so that the worst case is known before the sweep starts (the dry run prints it). A
    # round or an added cell is taken only if the most it can cost still fits (sweep/tune/searcher.py).
    max_trial_epochs: int | None = Field(None, ge=1)

    @field_validator("lr_limits")
    @classmethod
    def _limits_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < high:
            raise ValueError(f"search.lr_limits must be [low, high] with 0 < low < high (e.g. [1e-6, 1.0]), "
                             f"got [{low:g}, {high:g}]")
        return value


class SchedulerSpec(_Model):
    # asha: asynchronous successive halving per cell; halving: synchronous (a rung waits for all of the cell's
    # trials, paused); fifo: every trial runs to the end. See sweep/tune/scheduler.py.
    type: Literal["halving", "asha", "fifo"] = "halving"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)

    def rungs(self, max_t: int) -> list[int]:
        return halving_rungs(max_t, self.grace_period, self.reduction_factor)

    def most_trial_epochs(self, trials: int, max_t: int) -> int:
        """The most trial-epochs a round of `trials` trials of `max_t` epochs can take: synchronous halving's
        exact count, every trial to the end under fifo or asha (asha's early arrivals may all go on)."""
        if self.type == "halving":
            return halving_epochs(trials, max_t, self.rungs(max_t), self.reduction_factor)
        return trials * max_t


def halving_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which successive halving compares trials: grace, grace·η, grace·η², ... below max_t."""
    rungs, k = [], 0
    while (epoch := round(min(grace_period, max_t) * reduction_factor**k)) < max_t:
        if epoch not in rungs:
            rungs.append(epoch)
        k += 1
    return rungs


def halving_epochs(trials: int, max_t: int, rungs: list[int], eta: float) -> int:
    """Trial-epochs synchronous successive halving spends on one cell's trials: after each rung the best
    ceil(n/η) go on. Asynchronous ASHA spends at least this (its early arrivals go on unopposed)."""
    total, survivors, previous = 0, trials, 0
    for rung in [*rungs, max_t]:
        total += survivors * (rung - previous)
        previous, survivors = rung, max(1, math.ceil(survivors / eta))
    return total


GpuShare = Annotated[float, Field(ge=0)] | Literal["auto"]


class MethodResources(_Model):
    cpus: float | None = Field(None, gt=0)
    gpus: GpuShare | None = None
    workers: int | None = Field(None, ge=1)
    gpu_memory_gb: float | None = Field(None, gt=0)  # what one worker of this method needs on its GPU


class ResourcesSpec(_Model):
    cpus_per_trial: float = Field(1.0, gt=0)
    # "auto": each method's share of a GPU is its calibrated peak memory plus a margin (sweep.calibrate)
    gpus_per_trial: GpuShare = 0.0
    workers_per_trial: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    per_method: dict[str, MethodResources] = Field(default_factory=dict)
    # Fractional GPUs are a scheduling label, not memory isolation: with the GPUs' memory and what a trial needs,
    # a trial's GPU share grows to what its memory takes, so Ray never packs more trials on a GPU than fit.
    gpu_memory_gb: float | None = Field(None, gt=0)  # memory of one GPU of the cluster
    gpu_memory_per_trial_gb: float | None = Field(None, gt=0)
    # The GPU the sweep runs on, as torch names it, for `gpus_per_trial: auto` (calibrations are kept per GPU
    # type); default: this machine's GPU.
    gpu_type: str | None = None
    # Resources of the local Ray instance started when no cluster address is given (None: Ray's own count).
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)


class AdaptiveSeeds(_Model):
    """`seeds: {initial: 3, max: 10}`: every cell runs seeds 0 .. initial-1; a comparison the report would call
    undecided then gets the next seed for both of its cells, until it is decided or has `max` seeds
    (sweep.tune.adaptive). A list of seeds instead runs exactly those."""

    initial: int = Field(3, ge=1)
    max: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _max_at_least_initial(self) -> AdaptiveSeeds:
        if self.max < self.initial:
            raise ValueError(f"seeds: max ({self.max}) is below initial ({self.initial}); max counts every seed "
                             "a comparison may get, the initial ones included")
        return self


class ReportSpec(_Model):
    # Region of practical equivalence, in points (percentage points for F1 and accuracies): a comparison whose 95%
    # interval lies within ±rope is reported 'equivalent' (sweep.results.comparisons).
    rope: float = Field(1.0, ge=0)


class SweepSpec(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    arm: str | None = Field(None, pattern=NAME_PATTERN)  # set for the arms of a spec with `arms:`
    task: str = "classification"
    description: str = ""
    datasets: list[DatasetEntry] = Field(min_length=1)
    backbones: list[BackboneEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(default_factory=list)
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[int] | AdaptiveSeeds = Field(default_factory=lambda: [0])
    image_size: int = Field(224, ge=8)
    # BatchNorm running statistics while training, for every method without a `bn_mode` of its own: None keeps
    # each method's registered choice (full and batchnorm update them, the others keep the pretrained ones);
    # "train" updates them for every method, as the study's code does (the model is in train mode throughout).
    bn_mode: Literal["train", "eval"] | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    _methods_may_be_names = field_validator("methods", mode="before")(_names_to_entries)

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for f in value:
            if not 0 < f <= 1:
                raise ValueError(f"data fraction {f} is not in (0, 1]")
        return value

    @property
    def initial_seeds(self) -> list[int]:
        """The seeds every cell runs: the list, or 0 .. initial-1 of adaptive seeds."""
        return list(self.seeds) if isinstance(self.seeds, list) else list(range(self.seeds.initial))

    @property
    def max_seeds(self) -> int:
        """The most seeds a comparison can get (the list's length without adaptive seeds)."""
        return len(self.seeds) if isinstance(self.seeds, list) else self.seeds.max

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value: list[int] | AdaptiveSeeds) -> list[int] | AdaptiveSeeds:
        if isinstance(value, list) and not value:
            raise ValueError("seeds is empty: list at least one seed, or give {initial: 3, max: 10}")
        return value

    def methods_for(self, backbone: BackboneEntry) -> list[MethodEntry]:
        """The methods crossed with this backbone, with the spec's `bn_mode` where a method has none of its own."""
        methods = backbone.methods if backbone.methods is not None else self.methods
        if self.bn_mode is None:
            return methods
        return [m if m.bn_mode else m.model_copy(update={"bn_mode": self.bn_mode}) for m in methods]

    @model_validator(mode="after")
    def _unique_keys(self) -> SweepSpec:
        for backbone in self.backbones:
            if not self.methods_for(backbone):
                raise ValueError(f"no methods for backbone {backbone.key!r}: list `methods` (top level or its own)")
        axes = [("datasets", [d.key for d in self.datasets]), ("backbones", [b.key for b in self.backbones])]
        axes += [(f"methods of {b.key}", [m.key for m in self.methods_for(b)]) for b in self.backbones]
        for axis, keys in axes:
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            if duplicates:
                raise ValueError(f"{axis}: {duplicates} appear twice; give them distinct `id`s")
        return self


# What an arm gives replaces the top level's value, except these mappings, which it updates key by key.
ARM_MERGED = ("search", "scheduler", "resources")


def load_specs(path: str | Path | None = None, overrides: list[str] | None = None) -> list[SweepSpec]:
    """Read a spec YAML, apply `KEY=VALUE` overrides (dotted keys, YAML values), validate. A spec with `arms:`
    (e.g. the study's classification and text-to-image arms) gives one spec per arm, named `<name>-<arm id>`: the
    top level is what arms share, each arm's keys replace it (search, scheduler and resources merge key by key).
    Overrides apply to every arm, except `arms.N...`, which address one."""
    path = Path(path) if path else DEFAULT_SPEC
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist (specs shipped with the tool are in {SPACES_DIR})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path} must hold a mapping (name:, task:, datasets:, ...)")
    raw = _with_base(raw, path)
    overrides = overrides or []
    shared = [o for o in overrides if not o.startswith("arms.")]
    for override in overrides:
        if override.startswith("arms."):
            apply_override(raw, override)
    arms = raw.pop("arms", None)
    if arms is None:
        for override in shared:
            apply_override(raw, override)
        return [_validate(raw, f"spec {path}")]
    if not isinstance(arms, list) or not arms or not all(isinstance(a, dict) and a.get("id") for a in arms):
        raise SpecError(f"spec {path}: `arms` must be a list of mappings, each with an `id` (e.g. - id: t2i)")
    ids = [str(a["id"]) for a in arms]
    if len(set(ids)) != len(ids):
        raise SpecError(f"spec {path}: arm ids {ids} must be distinct")
    specs = []
    for arm in arms:
        merged = copy.deepcopy(raw)
        for key, value in arm.items():
            if key in ARM_MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _deep_update(merged[key], value)
            elif key != "id":
                merged[key] = copy.deepcopy(value)
        merged["name"], merged["arm"] = f"{raw.get('name', 'sweep')}-{arm['id']}", str(arm["id"])
        for override in shared:
            apply_override(merged, override)
        specs.append(_validate(merged, f"spec {path}, arm {arm['id']!r}"))
    return specs


def _with_base(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A spec with `base: OTHER.yaml` is that spec with this one's keys on top: top-level keys replace the base's
    (search, scheduler and resources merge key by key), arms are matched by id (an arm's keys replace the base
    arm's; `add_methods: [...]` appends to its methods instead), and arms the base lacks are added."""
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    base_path = (path.parent / str(base_name)).resolve()
    if not base_path.is_file():
        raise SpecError(f"spec {path}: its base {base_name!r} does not exist (looked for {base_path})")
    try:
        base = _with_base(yaml.safe_load(base_path.read_text()) or {}, base_path)
    except yaml.YAMLError as e:
        raise SpecError(f"spec {path}: its base {base_path} is not valid YAML: {e}") from None
    arms = {str(a.get("id")): copy.deepcopy(a) for a in base.get("arms") or []}
    for arm in raw.pop("arms", None) or []:
        target = arms.setdefault(str(arm.get("id")), {"id": arm.get("id")})
        for key, value in arm.items():
            if key == "add_methods":
                if "methods" not in target:
                    raise SpecError(f"spec {path}: arm {arm.get('id')!r} adds methods, but its base arm lists none")
                target["methods"] = [*target["methods"], *value]
            else:
                target[key] = copy.deepcopy(value)
    merged = copy.deepcopy(base)
    for key, value in raw.items():
        merged[key] = (_deep_update(merged[key], value) if key in ARM_MERGED and isinstance(value, dict)
                       and isinstance(merged.get(key), dict) else copy.deepcopy(value))
    if arms:
        merged["arms"] = list(arms.values())
    return merged


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _validate(raw: dict[str, Any], where: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{where} is invalid:\n{format_validation_error(e)}") from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SpecError(f"--set {override!r}: value is not valid YAML: {e}") from None
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"--set {override!r}: {'.'.join(parts[:i])} has no item {part}")
            if last:
                node[int(part)] = parsed
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = parsed
            else:
                node = node.setdefault(part, {})
        else:
            raise SpecError(f"--set {override!r}: {'.'.join(parts[:i])} is not a mapping or list")


def load_method_spaces(spec: SweepSpec, spec_path: Path | None = None) -> dict[str, dict[str, Dist]]:
    """Every method's search space: the spaces file, its section for the spec's task, then the spec's own
    overrides, flattened to {"lr": Dist, "knobs.r": Dist, ...}."""
    path = Path(spec.search.spaces_file) if spec.search.spaces_file else DEFAULT_METHOD_SPACES
    if not path.is_absolute() and spec_path is not None and (spec_path.parent / path).is_file():
        path = spec_path.parent / path
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"search spaces file {path} could not be read: {e}") from None
    merged = copy.deepcopy(raw)
    per_task = merged.pop("tasks", None) or {}
    if not isinstance(per_task, dict):
        raise SpecError(f"search spaces file {path}: `tasks` must map task names to {{method: space}} mappings")
    merged.update(per_task.get(spec.task) or {})
    for method, space in spec.search.spaces.items():
        merged[method] = {**merged.get(method, {}), **space}
    spaces: dict[str, dict[str, Dist]] = {}
    for method, space in merged.items():
        if not isinstance(space, dict):
            raise SpecError(f"search space of {method!r} must be a mapping like {{lr: {{low: 1e-4, high: 1e-2}}}}")
        flat: dict[str, Dist] = {}
        for name, value in space.items():
            items = value.items() if name == "knobs" and isinstance(value, dict) else [(None, value)]
            for knob, dist in items:
                key = f"knobs.{knob}" if knob else name
                try:
                    flat[key] = parse_dist(dist)
                except ValidationError as e:
                    raise SpecError(f"search space of {method!r}, {key}: {format_validation_error(e)}") from None
        spaces[method] = flat
    return spaces


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)


def chosen_arms(specs: list[SweepSpec], arms: list[str]) -> list[SweepSpec]:
    """The specs of the arms named with --arm (all of them when none is)."""
    if not arms:
        return specs
    known = [s.arm for s in specs if s.arm]
    unknown = sorted(set(arms) - set(known))
    if unknown:
        raise SpecError(f"--arm {', '.join(unknown)}: this spec's arms are {', '.join(known) or '(none)'}")
    return [s for s in specs if s.arm in arms]
