"""What a sweep will cost, measured on this machine before it is spent (`python -m sweep.calibrate`, or
`python -m sweep.launch --dry-run --calibrate`).

Every distinct (task, backbone, method, image size, batch size) of the spec is a group, measured once
(trainables.calibrate: warm-up and timed training steps and one evaluation pass on synthetic inputs, the backbone
built from its config): images/s, peak device memory, checkpoint size. Groups already measured on this device
type are read from the cache (`$MEDPEFT_CACHE_DIR/calibration/<device>.json`) unless --fresh. Then per cell:

    seconds per epoch = fraction x train images / train images/s + validation images / eval images/s
    device-seconds    = seconds per epoch x trial-epochs x the trial's device share (GPUs, or CPUs on a CPU machine)

with the trial-epochs of an exhaustive search (trials x epochs) and under synchronous halving (exact, the same
count the dry run prints), summed per group and over the sweep, and priced with --price-per-hour (on-demand)
and --spot-price-per-hour. Dataset sizes come from the datasets' manifests where the data is here, else from the
study's printed training sizes (sweep/references) for its datasets, else from --images ID=N.

The measured memory also sets each method's GPU share where a spec says `gpus_per_trial: auto`: the peak memory
plus the margin, as a share of the card's memory, so Ray never packs more trials onto a GPU than fit.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sweep.plan.grid import most_added_trials
from sweep.plan.spec import SpecError, halving_epochs

MEMORY_MARGIN = 0.2  # measured peak + 20%: allocator fragmentation, evaluation batches, CUDA context


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

    @property
    def key(self) -> str:
        return json.dumps([self.task, self.backbone, self.weights, list(self.kwargs), self.method, list(self.knobs),
                           self.bn_mode, self.image_size, self.batch_size])


def group_of(spec, cell) -> Group:
    train = spec.train
    batch = int(train.get("micro_batch_size") if isinstance(train.get("micro_batch_size"), int)
                else train.get("batch_size", 32))
    return Group(spec.task, cell.backbone.name, cell.backbone.weights, tuple(sorted(cell.backbone.kwargs.items())),
                 cell.method.name, tuple(sorted((k, json.dumps(v)) for k, v in cell.method.knobs.items())),
                 cell.method.bn_mode, spec.image_size, batch)


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


def measure_groups(groups: list[Group], device: str | None = None, steps: int = 5, fresh: bool = False,
                   log=print) -> tuple[str, dict[str, dict]]:
    """Every group's measurement on this device: from the cache, or measured now (and cached)."""
    import torch

    from trainables.calibrate import device_name, measure

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = device_name(target)
    cached = {} if fresh else read_cache(name)
    out, new = {}, {}
    for group in groups:
        if group.key in out:
            continue
        if group.key in cached:
            out[group.key] = {**cached[group.key], "reused": True}
            continue
        log(f"  measuring {group.backbone} / {group.method} at {group.image_size}px, batch {group.batch_size} ...")
        result = measure(group.task, group.backbone, group.weights, dict(group.kwargs), group.method,
                         {k: json.loads(v) for k, v in group.knobs}, group.bn_mode, group.image_size,
                         group.batch_size, steps=steps, device=target)
        new[group.key] = result
        out[group.key] = {**result, "reused": False}
    if new:
        write_cache(name, new)
    return name, out


def dataset_sizes(plan, given: dict[str, int]) -> dict[str, dict[str, int]]:
    """Images per split of every dataset of the plan: --images, else its manifest, else the reference's printed
    training size with the entry's validation and test shares; SpecError naming those it cannot find."""
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
        raise SpecError(f"calibration: the size of dataset(s) {', '.join(unknown)} is not known (their files are "
                        "not here); give it with --images ID=TRAIN_IMAGES")
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


def estimate(plan, measured: dict[str, dict], sizes: dict[str, dict[str, int]]) -> tuple[list[dict], dict]:
    """Per cell: seconds per epoch, trial-epochs exhaustive and with halving, device-hours of each; the totals."""
    spec = plan.spec
    rungs, eta = spec.scheduler.rungs(plan.max_epochs), spec.scheduler.reduction_factor
    cells = []
    for cell in plan.cells:
        m = measured[group_of(spec, cell).key]
        n = sizes[cell.dataset.key]
        workers = max(1, cell.resources.workers)
        epoch_s = (cell.fraction * n["train"] / m["train_images_per_s"] + n["val"] / m["eval_images_per_s"]) / workers
        exhaustive = cell.budget * plan.max_epochs
        halving = halving_epochs(cell.budget, plan.max_epochs, rungs, eta) if spec.scheduler.type != "fifo" \
            else exhaustive
        gpu = cell.resources.gpus > 0
        share = (cell.resources.gpus if gpu else cell.resources.cpus) * workers
        cells.append({"cell": cell.key, "group": group_of(spec, cell).key, "epoch_s": epoch_s,
                      "trial_epochs_exhaustive": exhaustive, "trial_epochs_halving": halving,
                      "device": "GPU" if gpu else "CPU", "device_share": share,
                      "device_hours_exhaustive": epoch_s * exhaustive * share / 3600,
                      "device_hours_halving": epoch_s * halving * share / 3600})
    totals = {k: sum(c[k] for c in cells) for k in ("trial_epochs_exhaustive", "trial_epochs_halving",
                                                    "device_hours_exhaustive", "device_hours_halving")}
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


def calibrate(plan, images: dict[str, int] | None = None, steps: int = 5, fresh: bool = False,
              device: str | None = None, log=print) -> Calibration:
    groups = [group_of(plan.spec, c) for c in plan.cells]
    sizes = dataset_sizes(plan, images or {})
    name, measured = measure_groups(groups, device, steps, fresh, log)
    cells, totals = estimate(plan, measured, sizes)
    for key in measured:
        mine = [c for c in cells if c["group"] == key]
        measured[key] |= {"cells": len(mine), **{k: sum(c[k] for c in mine) for k in
                          ("trial_epochs_exhaustive", "trial_epochs_halving", "device_hours_exhaustive",
                           "device_hours_halving")}}
    return Calibration(name, measured, cells, totals)


def priced(calibration: Calibration, on_demand: float | None, spot: float | None) -> dict[str, float]:
    out = {}
    for label, price in (("on_demand", on_demand), ("spot", spot)):
        if price is not None:
            for schedule in ("exhaustive", "halving"):
                out[f"cost_{label}_{schedule}"] = calibration.totals[f"device_hours_{schedule}"] * price
    return out


def render(calibration: Calibration, name: str, costs: dict[str, float]) -> str:
    lines = [f"Calibration of {name!r} on {calibration.device}:",
             f"{'group':<58} {'img/s':>8} {'eval/s':>8} {'peak MB':>8} {'ckpt MB':>8} {'cells':>5} "
             f"{'epochs (halving)':>17} {'device-h':>9}"]
    for key, m in calibration.groups.items():
        _task, backbone, _w, _k, method, knobs, _bn, size, batch = json.loads(key)
        label = f"{backbone}/{method}{'*' if knobs else ''} {size}px b{batch}" + (" (cached)" if m["reused"] else "")
        lines.append(f"{label[:58]:<58} {m['train_images_per_s']:>8.1f} {m['eval_images_per_s']:>8.1f} "
                     f"{m['peak_memory_mb']:>8.0f} {m['checkpoint_mb']:>8.2f} {m['cells']:>5} "
                     f"{m['trial_epochs_exhaustive']:>8,}/{m['trial_epochs_halving']:<8,} "
                     f"{m['device_hours_halving']:>9.2f}")
    t = calibration.totals
    lines.append(f"Total: {t['trial_epochs_halving']:,} trial-epochs with halving ({t['trial_epochs_exhaustive']:,} "
                 f"exhaustive): {t['device_hours_halving']:.1f} device-hours ({t['device_hours_exhaustive']:.1f} "
                 "exhaustive)")
    for key, value in costs.items():
        lines.append(f"  {key.replace('_', ' ')}: {value:,.2f}")
    return "\n".join(lines)


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
