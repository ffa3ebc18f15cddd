"""What a sweep will cost, measured on this machine before it is spent (`python -m sweep.calibrate`, or
`python -m sweep.launch --dry-run --calibrate`), and what a finished one cost (`python -m sweep.calibrate --actual`).

Every distinct (task, backbone, method, image size, batch size, CPUs per trial) of the spec is a group, measured
once (trainables.throughput: warm-up and timed training steps and one evaluation pass on synthetic inputs, the
backbone built from its config, on the CPU with the trial's own threads): images/s, peak device memory,
checkpoint size, and the seconds to build the model (`build`) and to write and read its checkpoint (`save`,
`load`). On the CPU a group is measured as the sweep runs it, `slots` trials at once (in as many fresh processes,
timed together), and a group read from the cache is scaled by the machine's speed now against then: a reference
workload timed at every calibration (sweep/plan/speed.py; a VM's speed moves by a quarter within minutes). The
machine's overheads are measured once too (sweep/plan/overheads.py: a tiny simulated sweep through the real
launcher on one slot, and a fresh import of the task's code): a trial's start (`trial`), a pause and
restore at a rung (`pause`), an epoch's MLflow log and report (`log`), the sweep's fixed cost (`sweep`: Ray start
and stop, MLflow setup, the final report) and a new trial actor's imports (`import`). Everything is read from the
cache (`$MEDPEFT_CACHE_DIR/calibration/<device>.json`) where this device type has it, unless --fresh.

Per cell, with T trials (its budget), E trial-epochs, R restores, F trials that run to the last epoch:

    epoch     = passes x fraction x train images / train images/s + validation images / eval images/s
    final     = (validation + test images) / eval images/s        (the best weights' predictions, once per F)
    seconds   = T x (trial + build) + E x (epoch + log + save) + R x (pause + build + load) + F x final
    device-s  = seconds x the trial's device share (GPUs, or CPUs on a CPU machine; x workers)

passes is 1 unless the spec's `train.min_steps_per_epoch` makes a small training set's epoch cycle it again
(`train_images_per_epoch`, with the spec's batch size). E is a search's trials x epochs (exhaustive), or synchronous halving's exact count (`halving_epochs`, as the dry
run prints); under halving F is the trials left after the last rung, and R counts, at each rung of n trials with s
going on, s x (n - 1) / n: every trial but the rung's last arrival pauses there, and a survivor that paused is
restored later (the last arrival goes on without a pause). Without halving R = 0 and F = T. Then for the sweep,
with `slots` trials at once (the cluster's, else this machine's CPUs and GPUs over a trial's, as the launcher
runs them):

    device-hours = (sum of device-s + import x slots x share) / 3600
    wall         = sweep + import + sum of seconds / slots + (1 - 1/slots) x tail

where tail is the longest time a cell's last trial runs alone after its last decision (halving: its epochs after
the last rung and its final predictions; otherwise half a trial): at the end of a sweep the other slots idle.
The worst case (`sweep.calibrate.render_worst_case`) adds every search round and added seed at the planned cost
per trial-epoch. Everything is priced with --price-per-hour (on-demand) and --spot-price-per-hour. Dataset sizes
come from the datasets' manifests where the data is here, else from the study's printed training sizes
(sweep/references) for its datasets, else from --images ID=N. Not counted: preparing a dataset's image cache the
first time (before the sweep starts), a new actor's CUDA start on a GPU, a multi-worker trial's TorchTrainer.

The measured memory also sets each method's GPU share where a spec says `gpus_per_trial: auto`: the peak memory
plus the margin, as a share of the card's memory, so Ray never packs more trials onto a GPU than fit.

What a finished sweep cost (`actual_cost`) is read from its MLflow experiment: the wall time from its sweep run's
start to its end, the trial-epochs its trials logged, the search rounds beyond the planned one and the seeds added;
`cost_record` puts it beside the dry run's estimate (the JSON `--calibration-json` wrote) as the cost record
(COST_RECORD_SCHEMA) that `python -m bench --only estimate` compares.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from sweep.errors import CalibrationError, StorageError
from sweep.plan.grid import most_added_trials
from sweep.plan.spec import SpecError, halving_epochs

MEMORY_MARGIN = 0.2  # measured peak + 20%: allocator fragmentation, evaluation batches, CUDA context
# What a group's measurement must hold to be reused from the cache (older caches lack the start-up and
# checkpoint timings: those groups are measured again).
MEASURED = ("train_images_per_s", "eval_images_per_s", "build_s", "checkpoint_save_s", "checkpoint_load_s")
RATES = ("train_images_per_s", "eval_images_per_s")  # what the machine's speed (drift, trials at once) scales
COST_RECORD_SCHEMA = "medpeft-sweep/cost-record/1"


@dataclass(frozen=True)
class Group:
    task: str
    backbone: str
    weights: str
    kwargs: tuple
    method: str
    knobs: tuple
    bn_mode: str | None
    image_size: int
    batch_size: int
    cpus: int  # a trial's CPUs: on a CPU machine, the threads its steps run on

    @property
    def key(self) -> str:
        return json.dumps([self.task, self.backbone, self.weights, list(self.kwargs), self.method, list(self.knobs),
                           self.bn_mode, self.image_size, self.batch_size, self.cpus])


def train_images_per_epoch(spec, cell, train_images: int) -> float:
    """Training images one epoch of a cell's trial runs through: its fraction of `train_images` (the dataset's
    training split after max_train_images), times the whole passes `train.min_steps_per_epoch` adds where that
    fraction gives fewer optimizer steps (trainables.classification; the spec's batch size, as group_of takes it)."""
    from trainables.data.loader import TRAIN_MIN_LAST, batch_count, passes_per_epoch

    images = cell.fraction * train_images
    min_steps = int(spec.train.get("min_steps_per_epoch", 1))
    if min_steps <= 1:
        return images
    batches = batch_count(round(images), int(spec.train.get("batch_size", 32)), TRAIN_MIN_LAST,
                          max(1, cell.resources.workers))
    return passes_per_epoch(batches, min_steps) * images


def group_of(spec, cell) -> Group:
    train = spec.train
    batch = int(train.get("micro_batch_size") if isinstance(train.get("micro_batch_size"), int)
                else train.get("batch_size", 32))
    return Group(spec.task, cell.backbone.name, cell.backbone.weights, tuple(sorted(cell.backbone.kwargs.items())),
                 cell.method.name, tuple(sorted((k, json.dumps(v)) for k, v in cell.method.knobs.items())),
                 cell.method.bn_mode, spec.image_size, batch, max(1, int(cell.resources.cpus)))


def cache_file(device: str) -> Path:
    root = Path(os.environ.get("MEDPEFT_CACHE_DIR") or Path("~/.cache/medpeft-sweep").expanduser())
    return root / "calibration" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", device) + ".json")


def read_cache(device: str) -> dict[str, dict]:
    path = cache_file(device)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_cache(device: str, measured: dict[str, dict]) -> None:
    path = cache_file(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({**read_cache(device), **measured}, indent=2))
    os.replace(partial, path)


@dataclass
class Calibration:
    device: str
    groups: dict[str, dict] = field(default_factory=dict)  # group key -> measurement (+ "reused")
    cells: list[dict] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)
    overheads: dict[str, float] = field(default_factory=dict)  # the machine's (sweep/plan/overheads.py)
    speed: dict[str, float] = field(default_factory=dict)  # the machine's now (sweep/plan/speed.py; {} on a GPU)


def measure_groups(groups: list[Group], device: str | None = None, steps: int = 5, fresh: bool = False,
                   log=print, slots: int = 1) -> tuple[str, dict[str, dict], dict[str, float]]:
    """Every group's measurement on this device as `slots` trials at once run it (sweep/plan/speed.py): from the
    cache, scaled by the machine's reference speed now against then, or measured now (and cached). Returns the
    device's name, the measurements and the machine's speed now ({} on a GPU)."""
    import torch

    from sweep.plan import speed
    from trainables.throughput import device_name, measure

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = device_name(target)
    on_cpu = target.type == "cpu"
    at_once = slots if on_cpu else 1  # a GPU trial has its own share of the card
    cached = {} if fresh else read_cache(name)
    now: dict[str, float] = {}
    if on_cpu:
        threads = max((g.cpus for g in groups), default=1)
        log(f"  timing the machine's speed now (a reference workload, {speed.REFERENCE_SECONDS:g} s) ...")
        now = {"reference_per_s": speed.reference_rate(threads), "threads": threads, "at_once": at_once}
    out, new = {}, {}
    for group in groups:
        if group.key in out:
            continue
        key = cache_key(group, at_once)
        entry = cached.get(key, {})
        if all(k in entry for k in MEASURED):
            then = entry.get("reference_per_s")
            drift = now["reference_per_s"] / then if now and then else 1.0
            out[group.key] = {**entry, **{k: entry[k] * drift for k in RATES}, "reused": True, "drift": drift}
            continue
        together = f", {at_once} at once" if at_once > 1 else ""
        log(f"  measuring {group.backbone} / {group.method} at {group.image_size}px, batch {group.batch_size}"
            f"{together} ...")
        kwargs = {"task": group.task, "backbone": group.backbone, "weights": group.weights,
                  "kwargs": dict(group.kwargs), "method": group.method,
                  "knobs": {k: json.loads(v) for k, v in group.knobs}, "bn_mode": group.bn_mode,
                  "image_size": group.image_size, "batch_size": group.batch_size, "steps": steps,
                  "device": str(target), "threads": group.cpus if on_cpu else None}
        if at_once > 1:
            runs = speed.together(measure, kwargs, at_once)
            result = {**runs[0], **{k: statistics.fmean(r[k] for r in runs) for k in RATES}}
        else:
            result = measure(**kwargs)
        result |= {"at_once": at_once, **({"reference_per_s": now["reference_per_s"]} if now else {})}
        new[key] = result
        out[group.key] = {**result, "reused": False, "drift": 1.0}
    if new:
        write_cache(name, new)
    return name, out, now


def cache_key(group: Group, at_once: int) -> str:
    """A group's entry in the cache: its key, and how many trials ran at once when it was measured (one: the key
    alone, as caches before that was measured have it)."""
    return group.key if at_once <= 1 else f"{group.key} x{at_once}"


def dataset_sizes(plan, given: dict[str, int]) -> dict[str, dict[str, int]]:
    """Images per split of every dataset of the plan: --images, else its manifest, else the reference's printed
    training size with the entry's validation and test shares; CalibrationError naming those it cannot find."""
    from sweep.plan.grid import data_config
    from sweep.references import available, load_reference
    from trainables.config import DataConfig
    from trainables.data import DatasetError, open_source, prepare_manifest

    printed = {}
    for name in available():
        reference = load_reference(name)
        sizes = reference.tables.dropna(subset=["train_size"]).drop_duplicates("dataset")
        for r in sizes.itertuples():
            if str(r.train_size).isdigit():
                printed[reference.ours("dataset", r.dataset)] = int(r.train_size)
    sizes, unknown = {}, []
    for cell in plan.cells:
        entry = cell.dataset
        if entry.key in sizes or entry.key in unknown:
            continue
        if entry.key in given:
            sizes[entry.key] = _split_sizes(given[entry.key], entry)
            continue
        try:
            config = DataConfig.model_validate(data_config(entry, plan.spec.image_size))
            frame = prepare_manifest(config, open_source(config)).frame
            counts = frame["split"].value_counts()
            sizes[entry.key] = {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
        except (DatasetError, ValueError, OSError):
            if entry.key in printed:
                sizes[entry.key] = _split_sizes(printed[entry.key], entry)
            else:
                unknown.append(entry.key)
    if unknown:
        raise CalibrationError(f"calibration: the size of dataset(s) {', '.join(unknown)} is not known (their "
                               "files are not here); give it with --images ID=TRAIN_IMAGES")
    # A trial trains on at most max_train_images of the training split (trainables/data/prepare.py).
    for cell in plan.cells:
        cap = cell.dataset.max_train_images
        if cap:
            sizes[cell.dataset.key]["train"] = min(sizes[cell.dataset.key]["train"], cap)
    return sizes


def test_images(plan) -> dict[str, int | None]:
    """Test images per dataset of the plan, from the source's rows without building a manifest (the dry run
    writes nothing): its own test split plus its test share of the rows without a split. None where its files
    cannot be read here."""
    from sweep.plan.grid import data_config
    from trainables.config import DataConfig
    from trainables.data import DatasetError, open_source

    found: dict[str, int | None] = {}
    for cell in plan.cells:
        entry = cell.dataset
        if entry.key in found:
            continue
        try:
            config = DataConfig.model_validate(data_config(entry, plan.spec.image_size))
            split = open_source(config).rows()["split"].fillna("")
            found[entry.key] = int((split == "test").sum() + round(entry.test_share * (split == "").sum()))
        except (DatasetError, ValueError, OSError, KeyError):
            found[entry.key] = None
    return found


def _split_sizes(train: int, entry) -> dict[str, int]:
    total = train / max(1e-9, 1 - entry.val_share - entry.test_share)
    return {"train": train, "val": round(total * entry.val_share), "test": round(total * entry.test_share)}


def restored_pauses(trials: int, max_t: int, rungs: list[int], eta: float) -> float:
    """Restores synchronous halving makes in one cell's round: at each rung of n trials, every one but the last
    to arrive pauses, and each of the s that go on had paused with chance (n - 1) / n."""
    total, survivors = 0.0, trials
    for rung in rungs:
        if rung >= max_t:
            break
        going_on = max(1, math.ceil(survivors / eta))
        total += going_on * (survivors - 1) / survivors
        survivors = going_on
    return total


def finishers(trials: int, max_t: int, rungs: list[int], eta: float) -> int:
    """Trials of a halving round that run to its last epoch (and predict with their best weights there)."""
    survivors = trials
    for rung in rungs:
        if rung < max_t:
            survivors = max(1, math.ceil(survivors / eta))
    return survivors


def slots_for(plan, cpus: float, gpus: float) -> int:
    """How many trials run at once with these CPUs and GPUs, for the lightest cell's resources (what the launcher
    lets Tune keep pending: sweep.tune.run.concurrent_trials)."""
    slots = []
    for cell in plan.cells:
        r = cell.resources
        per_trial = {"CPU": r.cpus * r.workers, "GPU": r.gpus * r.workers}
        fits = [{"CPU": cpus, "GPU": gpus}[k] / v for k, v in per_trial.items() if v > 0]
        slots.append(max(1, math.floor(min(fits) + 1e-9)) if fits else 1)
    return max(slots) if slots else 1


def local_slots(plan) -> int:
    """Trials at once on this machine (a local Ray: the spec's max_concurrent_trials, else its num_cpus/num_gpus,
    else what is here), as the launcher runs them."""
    import torch

    res = plan.spec.resources
    if res.max_concurrent_trials:
        return res.max_concurrent_trials
    cpus = res.num_cpus if res.num_cpus is not None else os.cpu_count() or 1
    gpus = res.num_gpus if res.num_gpus is not None else torch.cuda.device_count()
    return slots_for(plan, cpus, gpus)


def estimate(plan, measured: dict[str, dict], sizes: dict[str, dict[str, int]], overheads: dict[str, float],
             slots: int) -> tuple[list[dict], dict]:
    """Per cell: seconds per epoch, trial-epochs, restores, device-hours exhaustive and with halving (steps and
    overheads, the module docstring's formula); the totals, with the wall time on `slots` slots."""
    spec = plan.spec
    rungs, eta = spec.scheduler.rungs(plan.max_epochs), spec.scheduler.reduction_factor
    halving_like = spec.scheduler.type != "fifo"  # ASHA spends at least halving's count (halving_epochs)
    pausing = spec.scheduler.type == "halving"  # only synchronous halving pauses trials at its rungs
    o = overheads
    cells, tails = [], {"exhaustive": 0.0, "halving": 0.0}
    for cell in plan.cells:
        m = measured[group_of(spec, cell).key]
        n = sizes[cell.dataset.key]
        workers = max(1, cell.resources.workers)
        train_images = train_images_per_epoch(spec, cell, n["train"])
        epoch_s = (train_images / m["train_images_per_s"] + n["val"] / m["eval_images_per_s"]) / workers
        final_s = (n["val"] + n.get("test", 0)) / m["eval_images_per_s"] / workers
        start_s = o["trial_s"] + m["build_s"]
        per_epoch = epoch_s + o["epoch_s"] + m["checkpoint_save_s"]
        restore_s = o["pause_s"] + m["build_s"] + m["checkpoint_load_s"]
        trials, max_t = cell.budget, plan.max_epochs
        exhaustive = trials * max_t
        halving = halving_epochs(trials, max_t, rungs, eta) if halving_like else exhaustive
        restores = restored_pauses(trials, max_t, rungs, eta) if pausing else 0.0
        finishing = finishers(trials, max_t, rungs, eta) if halving_like else trials
        seconds = {"exhaustive": trials * (start_s + final_s) + exhaustive * per_epoch,
                   "halving": trials * start_s + halving * per_epoch + restores * restore_s + finishing * final_s}
        after_last = max_t - max([r for r in rungs if r < max_t], default=0) if halving_like else max_t / 2
        tails["halving"] = max(tails["halving"], after_last * per_epoch + final_s)
        tails["exhaustive"] = max(tails["exhaustive"], max_t / 2 * per_epoch + final_s)
        gpu = cell.resources.gpus > 0
        share = (cell.resources.gpus if gpu else cell.resources.cpus) * workers
        steps = {"exhaustive": epoch_s * exhaustive, "halving": epoch_s * halving}
        cells.append({"cell": cell.key, "group": group_of(spec, cell).key, "epoch_s": epoch_s,
                      "train_images_per_epoch": train_images,
                      "start_s": start_s, "per_epoch_s": per_epoch, "restore_s": restore_s, "final_s": final_s,
                      "trials": trials, "trial_epochs_exhaustive": exhaustive, "trial_epochs_halving": halving,
                      "restores_halving": restores, "device": "GPU" if gpu else "CPU", "device_share": share,
                      **{f"seconds_{k}": v for k, v in seconds.items()},
                      **{f"device_hours_{k}": v * share / 3600 for k, v in seconds.items()},
                      **{f"overhead_hours_{k}": (seconds[k] - steps[k]) * share / 3600 for k in seconds}})
    keys = ("trials", "trial_epochs_exhaustive", "trial_epochs_halving", "restores_halving",
            "device_hours_exhaustive", "device_hours_halving", "overhead_hours_exhaustive", "overhead_hours_halving")
    totals = {k: sum(c[k] for c in cells) for k in keys}
    share = max((c["device_share"] for c in cells), default=1.0)
    imports = o.get("import_s", 0.0) * slots * share / 3600  # each slot's actor imports the task's code once
    serial = o["sweep_s"] + o.get("import_s", 0.0)  # the slots' imports overlap: one counts in the wall
    totals |= {"slots": slots, "serial_s": serial}
    for k in ("exhaustive", "halving"):
        totals[f"device_hours_{k}"] += imports
        totals[f"overhead_hours_{k}"] += imports
        totals[f"wall_s_{k}"] = (serial + sum(c[f"seconds_{k}"] for c in cells) / slots
                                 + (1 - 1 / slots) * tails[k])
    return cells, totals


def gpu_shares(plan, measured: dict[str, dict], card_mb: float | None, margin: float = MEMORY_MARGIN) -> dict:
    """(backbone key, method key) -> the GPU share its measured memory takes (peak x (1 + margin) / card),
    rounded up to a hundredth and at most one card."""
    shares = {}
    for cell in plan.cells:
        m = measured[group_of(plan.spec, cell).key]
        card = card_mb or m.get("device_memory_mb")
        if not card:
            raise SpecError("gpus_per_trial: auto needs the GPU's memory: calibrate on the GPU type the sweep runs on "
                            "(python -m sweep.calibrate --config SPEC on a GPU node), or give resources.gpu_memory_gb")
        shares[(cell.backbone.key, cell.method.key)] = min(1.0, math.ceil(100 * m["peak_memory_mb"] * (1 + margin)
                                                                          / card) / 100)
    return shares


def measure_overheads(name: str, tasks: list[str], fresh: bool = False, log=print) -> dict[str, float]:
    """The machine's overheads (sweep/plan/overheads.py) for these tasks: from the cache of device type `name`,
    or measured now (and cached). The imports counted are the costliest task's."""
    from sweep.plan import overheads

    cached = {} if fresh else read_cache(name)
    new = {}
    if overheads.HARNESS not in cached:
        log("  measuring the sweep's overheads (a tiny simulated sweep on one slot) ...")
        new[overheads.HARNESS] = overheads.measure_harness()
    for task in sorted(set(tasks)):
        key = f"overheads/{task}"
        if key not in cached:
            log(f"  measuring the imports of a {task} trial ...")
            new[key] = overheads.measure_imports(task)
    if new:
        write_cache(name, new)
    found = {**cached, **new}
    return {**found[overheads.HARNESS], "import_s": max(found[f"overheads/{t}"]["import_s"] for t in tasks)}


def calibrate(plan, images: dict[str, int] | None = None, steps: int = 5, fresh: bool = False,
              device: str | None = None, log=print, slots: int | None = None) -> Calibration:
    """Measure (or read from the cache) every group and the machine's overheads; estimate the plan on `slots`
    slots (default: this machine's, as a local Ray runs it)."""
    groups = [group_of(plan.spec, c) for c in plan.cells]
    sizes = dataset_sizes(plan, images or {})
    slots = slots or local_slots(plan)
    name, measured, speed = measure_groups(groups, device, steps, fresh, log, slots)
    overheads = measure_overheads(name, [plan.spec.task], fresh, log)
    cells, totals = estimate(plan, measured, sizes, overheads, slots)
    for key in measured:
        mine = [c for c in cells if c["group"] == key]
        measured[key] |= {"cells": len(mine), **{k: sum(c[k] for c in mine) for k in
                          ("trial_epochs_exhaustive", "trial_epochs_halving", "device_hours_exhaustive",
                           "device_hours_halving")}}
    return Calibration(name, measured, cells, totals, overheads, speed)


def priced(calibration: Calibration, on_demand: float | None, spot: float | None) -> dict[str, float]:
    out = {}
    for label, price in (("on_demand", on_demand), ("spot", spot)):
        if price is not None:
            for schedule in ("exhaustive", "halving"):
                out[f"cost_{label}_{schedule}"] = calibration.totals[f"device_hours_{schedule}"] * price
    return out


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def render(calibration: Calibration, name: str, costs: dict[str, float]) -> str:
    lines = [f"Calibration of {name!r} on {calibration.device}:",
             f"{'group':<58} {'img/s':>8} {'eval/s':>8} {'peak MB':>8} {'ckpt MB':>8} {'build s':>7} {'cells':>5} "
             f"{'epochs (halving)':>17} {'device-h':>9}"]
    for key, m in calibration.groups.items():
        _task, backbone, _w, _k, method, knobs, _bn, size, batch, _cpus = json.loads(key)
        label = f"{backbone}/{method}{'*' if knobs else ''} {size}px b{batch}" + (
            f" (cached, x{m['drift']:.2f})" if m["reused"] else "")
        lines.append(f"{label[:58]:<58} {m['train_images_per_s']:>8.1f} {m['eval_images_per_s']:>8.1f} "
                     f"{m['peak_memory_mb']:>8.0f} {m['checkpoint_mb']:>8.2f} {m['build_s']:>7.2f} {m['cells']:>5} "
                     f"{m['trial_epochs_exhaustive']:>8,}/{m['trial_epochs_halving']:<8,} "
                     f"{m['device_hours_halving']:>9.2f}")
    o, t, speed = calibration.overheads, calibration.totals, calibration.speed
    if speed:
        at_once = speed["at_once"]
        lines.append(f"Speed: measured as the sweep runs its trials, {at_once} at once on {speed['threads']} "
                     f"thread{'s' if speed['threads'] != 1 else ''} each; the machine's reference workload runs at "
                     f"{speed['reference_per_s']:.1f} steps/s now, and a cached group is scaled by now / when it was "
                     "measured (x above)")
    lines.append(f"Overheads: {o['trial_s']:.2f} s per trial start, {o['pause_s']:.2f} s per pause and restore, "
                 f"{o['epoch_s']:.2f} s per epoch (MLflow, report), {o['import_s']:.1f} s of imports per trial "
                 f"actor, {o['sweep_s']:.0f} s per sweep (Ray, MLflow, report); plus each group's build and "
                 "checkpoint times")
    lines.append(f"Total: {t['trial_epochs_halving']:,} trial-epochs with halving ({t['trial_epochs_exhaustive']:,} "
                 f"exhaustive): {t['device_hours_halving']:.2f} device-hours ({t['device_hours_exhaustive']:.2f} "
                 f"exhaustive), {t['overhead_hours_halving']:.2f} of them start-up, restores, checkpoints and "
                 "logging")
    lines.append(f"Wall time on {t['slots']} slot{'s' if t['slots'] != 1 else ''}: about "
                 f"{duration(t['wall_s_halving'])} with halving ({duration(t['wall_s_exhaustive'])} exhaustive)")
    for key, value in costs.items():
        lines.append(f"  {key.replace('_', ' ')}: {value:,.2f}")
    return "\n".join(lines)


def worst_case(plan, totals: dict[str, float]) -> dict[str, float]:
    """The most the sweep can cost once it adapts: every search round (a learning-rate range extended past an
    edge, an epoch doubling) and every added seed run, or as many as search.max_trial_epochs lets run, each extra
    trial-epoch at the planned average cost (device time and the wall time past the serial part)."""
    planned = totals["trial_epochs_halving"]
    _, round_epochs = most_added_by_rounds(plan)
    most = round((planned + round_epochs) * plan.spec.max_seeds / len(plan.spec.initial_seeds))
    if plan.spec.search.max_trial_epochs is not None:  # the sweep takes nothing past it (sweep/tune/searcher.py)
        most = min(most, plan.spec.search.max_trial_epochs)
    scale = most / planned if planned else 0.0
    serial = totals["serial_s"]
    return {"trial_epochs": most, "device_hours": totals["device_hours_halving"] * scale,
            "wall_s": serial + (totals["wall_s_halving"] - serial) * scale}


def most_added_by_rounds(plan) -> tuple[int, int]:
    """(trials, trial-epochs) that a sweep's search rounds (sweep/tune/rounds.py) can add at most to its plan:
    every extension round as large as the limits allow, each of its trials run to the end, and every cell's
    chosen trial run again with 2x, 4x, ... the epochs, `max_epoch_doublings` times."""
    search = plan.spec.search
    trials = (sum(most_added_trials(c.space, c.budget, plan.grid_points, search.sampler, search.lr_limits,
                                    search.max_extensions) for c in plan.cells) if search.extend else 0)
    doubled = sum(2**j * plan.max_epochs for j in range(1, search.max_epoch_doublings + 1))
    cells = len(plan.cells)
    return trials + cells * search.max_epoch_doublings, trials * plan.max_epochs + cells * doubled


def actual_cost(uri: str, sweep: str, initial_seeds: Collection[int]) -> dict:
    """What a sweep cost, from its MLflow experiment: wall seconds from its sweep run's start to its end (the
    last trial's end while it is not closed; a resumed sweep's wall time includes the time it stood still), the
    trial-epochs its trials trained (each trial run's last logged epoch: a resumed trial continues its run),
    its rounds (each cell's round 0 and the search rounds it added), and the cells adaptive seeds added (a seed
    outside the spec's `initial_seeds`). An added cell counts as run when it has a trial run: the seed extender
    registers a cell's MLflow run before any of its trials starts, so a sweep stopped right after asking for more
    seeds has cell runs that cost nothing (`cells_added_not_run`)."""
    from sweep.store import mlflow_experiment
    from trainables.contract import (
        CELL_KEY_TAG,
        EPOCH,
        EPOCHS_PARAM,
        ROLE_TAG,
        ROUND_KIND_TAG,
        ROUND_TAG,
        SEED_TAG,
        SWEEP_CELLS_PARAM,
    )

    mlflow = mlflow_experiment.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        raise StorageError(f"MLflow at {uri} has no sweep named {sweep!r} (give --name as the sweep was launched, and "
                           "its --storage or --mlflow-uri)")

    def runs(role: str) -> list:
        return mlflow_experiment.search_all(mlflow, experiment.experiment_id, f"tags.{ROLE_TAG} = '{role}'")

    parents, trials, cells = runs("sweep"), runs("trial"), runs("cell")
    if not parents or not trials:
        raise StorageError(f"sweep {sweep!r} in {uri} has {'no sweep run' if not parents else 'no trial run'}: it "
                           "never started (nothing to measure)")
    parent = parents[0]
    ends = [r.info.end_time for r in trials if r.info.end_time]
    complete = bool(parent.info.end_time)
    end = parent.info.end_time or max(ends, default=parent.info.start_time)
    rounds: dict[tuple[str, int], dict] = {}
    epochs = 0
    for run in trials:
        trained = int(run.data.metrics.get(EPOCH, 0))
        epochs += trained
        key = (run.data.tags.get(CELL_KEY_TAG, ""), int(run.data.tags.get(ROUND_TAG, 0)))
        entry = rounds.setdefault(key, {"cell": key[0], "round": key[1], "kind": run.data.tags.get(ROUND_KIND_TAG,
                                                                                                  "initial"),
                                        "trials": 0, "max_epochs": 0, "trial_epochs": 0})
        entry["trials"] += 1
        entry["max_epochs"] = max(entry["max_epochs"], int(run.data.params.get(EPOCHS_PARAM, 0)))
        entry["trial_epochs"] += trained
    added_rounds = [r for r in rounds.values() if r["round"] > 0]
    kinds = sorted({r["kind"] for r in added_rounds})
    planned_cells = int(parent.data.params.get(SWEEP_CELLS_PARAM, len(cells)))
    ran = {run.data.tags.get(CELL_KEY_TAG, "") for run in trials}
    initial = {str(seed) for seed in initial_seeds}
    added = [run for run in cells if run.data.tags.get(SEED_TAG, "") not in initial]
    added_ran = sum(run.data.tags.get(CELL_KEY_TAG, "") in ran for run in added)
    lines: dict[str, set] = {}  # a cell's line (its key without the seed) -> the seeds that ran
    for run in cells:
        key = run.data.tags.get(CELL_KEY_TAG, "")
        if key in ran:
            lines.setdefault(key.rsplit("/seed=", 1)[0], set()).add(run.data.tags.get(SEED_TAG, ""))
    return {"wall_s": (end - parent.info.start_time) / 1000, "complete": complete,
            "started": _iso(parent.info.start_time), "ended": _iso(end),
            "trials": len(trials), "trial_epochs": epochs,
            "rounds_run": len(added_rounds), "rounds_by_kind": {k: sum(r["kind"] == k for r in added_rounds)
                                                                for k in kinds},
            "cells_planned": planned_cells, "cells_added": added_ran, "cells_added_not_run": len(added) - added_ran,
            "most_seeds_per_comparison": max((len(s) for s in lines.values()), default=0),
            "rounds": sorted(rounds.values(), key=lambda r: (r["cell"], r["round"]))}


def _iso(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def estimated_for(spec, rounds: list[dict]) -> int:
    """Trial-epochs the cost model gives for the rounds that ran (actual_cost's `rounds`: each cell's, with its
    trials and epochs): a round of n trials under the spec's scheduler, an epoch doubling's single trial run to
    its end (no scheduler stops it)."""
    from trainables.contract import ROUND_DOUBLING

    total = 0
    for r in rounds:
        n, max_t = r["trials"], r["max_epochs"]
        if r["kind"] == ROUND_DOUBLING or spec.scheduler.type == "fifo":
            total += n * max_t
        else:
            total += halving_epochs(n, max_t, spec.scheduler.rungs(max_t), spec.scheduler.reduction_factor)
    return total


def estimate_entry(calibration: dict, name: str) -> dict:
    """The entry for sweep `name` of the JSON that `--calibrate --calibration-json` wrote (its only one, if it
    holds one: a sweep may be launched under another --name)."""
    if not isinstance(calibration, dict) or not calibration:
        raise CalibrationError("the estimate JSON holds no calibration (write it with python -m sweep.launch "
                               "--config SPEC --dry-run --calibrate --calibration-json PATH)")
    entry = calibration.get(name) or (next(iter(calibration.values())) if len(calibration) == 1 else None)
    if entry is None:
        raise CalibrationError(f"the estimate JSON has no sweep {name!r} (it has: {', '.join(calibration)})")
    missing = [k for k in ("totals", "worst_case") if k not in entry] + \
        [k for k in ("trial_epochs_halving", "wall_s_halving", "serial_s") if k not in entry.get("totals", {})]
    if missing:
        raise CalibrationError(f"the estimate JSON's entry lacks {', '.join(missing)}: it was written before "
                               "wall-time estimates; run the dry run with --calibrate again")
    return entry


def cost_record(name: str, estimate_json: dict, actual: dict, spec) -> dict:
    """The cost record of a finished sweep (COST_RECORD_SCHEMA): the dry run's estimate (planned and worst
    case), what it actually cost, the estimate for what actually ran (its rounds and added seeds, at the planned
    cost per trial-epoch) and the ratios estimate / actual."""
    entry = estimate_entry(estimate_json, name)
    t = entry["totals"]
    planned = t["trial_epochs_halving"]
    ran = estimated_for(spec, actual["rounds"])
    serial = t["serial_s"]
    wall = serial + (t["wall_s_halving"] - serial) * (ran / planned if planned else 0.0)
    return {
        "schema": COST_RECORD_SCHEMA,
        "sweep": name,
        "device": entry.get("device", ""),
        "estimate": {
            "planned": {"trial_epochs": planned, "wall_s": t["wall_s_halving"],
                        "device_hours": t["device_hours_halving"], "slots": t["slots"]},
            "worst_case": entry["worst_case"],
            "overheads": entry.get("overheads", {}),
        },
        "actual": {k: v for k, v in actual.items() if k != "rounds"},
        "estimate_for_what_ran": {"trial_epochs": ran, "wall_s": wall},
        "ratios": record_ratios(ran, wall, actual),
        "rounds": actual["rounds"],
    }


def record_ratios(trial_epochs: float, wall_s: float, actual: dict) -> dict[str, float | None]:
    """estimate / actual of trial-epochs and wall time (None where the actual is zero)."""
    return {"trial_epochs": trial_epochs / actual["trial_epochs"] if actual["trial_epochs"] else None,
            "wall": wall_s / actual["wall_s"] if actual["wall_s"] else None}


def check_record(record: dict, where: str) -> dict:
    """A cost record as cost_record writes it, or a CalibrationError saying what is wrong with it."""
    if not isinstance(record, dict) or record.get("schema") != COST_RECORD_SCHEMA:
        raise CalibrationError(f"{where}: not a cost record (its schema should be {COST_RECORD_SCHEMA!r}; write "
                               "one with python -m sweep.calibrate --actual)")
    for path in ("estimate.planned.wall_s", "estimate.planned.trial_epochs", "estimate_for_what_ran.wall_s",
                 "estimate_for_what_ran.trial_epochs", "actual.wall_s", "actual.trial_epochs"):
        value = record
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CalibrationError(f"{where}: {path} is missing or not a number")
    return record
