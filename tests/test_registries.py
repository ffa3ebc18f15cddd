"""Every registered dataset and every registered task through one contract test each: a new entry is tested
without editing a test, and fails here until it has what the contract needs (a fake layout, a tiny trial).

Datasets (trainables.data.list_datasets()): each source, on a tiny fake copy of its publisher's layout, keeps the
`Source` interface of trainables/data/base.py: options checked, files located, one row per image with an integer
label among its classes and a known split, images decoded to uint8 in the order asked, stable hashes and
fingerprints, a manifest built through the shared pipeline, and missing data a DatasetError.

Tasks (trainables.tasks.list_tasks()): each Task's fields agree with each other and with what its loop does: the
train schema validates its own defaults and refuses unknown keys, its families are known backbone families, its
probe applies a method on the meta device (and refuses one that does not fit), its weight check refuses a bogus
source by name, and a tiny trial of its worker reports every epoch the keys its selection names.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from tests import dataset_layouts as layouts
from tests.conftest import needs_shared_data, run_worker
from trainables.backbones import WeightsError
from trainables.contract import EPOCH, SCORE, VAL_BEST_LOSS, Selection
from trainables.data import DatasetError, Located, Source, build_manifest, get_source, list_datasets
from trainables.data.base import SPLITS
from trainables.data.base import Options as BaseOptions
from trainables.methods import MethodError, get_method, list_methods
from trainables.methods.registry import FAMILIES
from trainables.tasks import get_task, list_tasks

# -- datasets ------------------------------------------------------------------------------------------------


def tiny_medmnist(root: Path) -> Path:
    """<subset>_28.npz with the official arrays: a few distinct random 28 px images per split, labels as a column."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "breastmnist_28.npz", **arrays)
    return root


def tiny_imagefolder(root: Path) -> Path:
    """root/{train,val,test}/<class>/*.png"""
    seeds = iter(range(10_000))
    for split in SPLITS:
        for c in ("cat", "dog"):
            for i in range(3):
                layouts.write_image(root / split / c / f"{i}.png", next(seeds))
    return root


def tiny_csv(root: Path) -> Path:
    """labels.csv (path, label, group, split, caption) beside the images, in a sub-folder of the root."""
    rows = []
    for i in range(12):
        layouts.write_image(root / "table" / "images" / f"{i}.png", 500 + i)
        rows.append({"path": f"images/{i}.png", "label": "ab"[i % 2], "group": f"patient{i // 2}",
                     "split": "", "caption": f"image {i}"})
    pd.DataFrame(rows).to_csv(root / "table" / "labels.csv", index=False)
    return root


def no_files(root: Path) -> None:
    return None


# Each dataset's tiny fake layouts: (builder of its folder, or None for a dataset without files; options).
# Layouts made from the real samples in ../shared/data need them (`SHARED`).
LAYOUTS: dict[str, list[tuple[Callable[[Path], Path | None], dict]]] = {
    "breastus": [(layouts.busi, {})],
    "csv": [(tiny_csv, {"file": "table/labels.csv"})],
    "fitzpatrick17k": [(functools.partial(layouts.fitzpatrick17k, missing=0), {})],
    "ham10000": [(layouts.ham10000, {})],
    "imagefolder": [(tiny_imagefolder, {})],
    "medmnist": [(tiny_medmnist, {"subset": "breastmnist", "download": False})],
    "mimic_cxr": [(layouts.mimic_cxr, {})],
    "retinopathy": [(layouts.aptos, {}), (layouts.eyepacs, {})],
    "rsna_pneumonia": [(layouts.rsna_pneumonia, {})],
    "smdg": [(layouts.smdg, {})],
    "smear": [(layouts.sipakmed, {}), (layouts.herlev, {})],
    "synthetic": [(no_files, {"train": 12, "val": 6, "test": 6})],
}
SHARED = {"breastus", "ham10000", "mimic_cxr", "rsna_pneumonia", "smdg"}


def test_every_registered_dataset_has_a_fake_layout():
    missing = set(list_datasets()) - set(LAYOUTS)
    assert not missing, f"add a tiny fake layout of {sorted(missing)} to LAYOUTS in {__file__}"
    assert set(LAYOUTS) <= set(list_datasets()), "LAYOUTS names a dataset that is not registered"


def check_rows(rows: pd.DataFrame, classes: list[str], name: str) -> None:
    assert isinstance(rows, pd.DataFrame) and len(rows) > 0
    assert {"item", "label", "split", "group"} <= set(rows.columns) <= {"item", "label", "split", "group", "caption"}
    assert rows["item"].map(type).eq(str).all() and rows["item"].is_unique, f"{name}: items must be unique strings"
    assert pd.api.types.is_integer_dtype(rows["label"]), f"{name}: labels are indices, not {rows['label'].dtype}"
    assert rows["label"].between(0, len(classes) - 1).all()
    assert set(rows["split"]) <= {*SPLITS, ""}
    assert rows["group"].fillna("").map(lambda g: isinstance(g, str)).all()
    if "caption" in rows:
        assert rows["caption"].map(lambda c: isinstance(c, str)).all()


def check_images(source: Source, items: list[str]) -> None:
    images = list(source.read(items, 32))
    assert len(images) == len(items)
    for image in images:
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert image.ndim == 2 if source.channels == 1 else image.shape[2:] == (3,), image.shape
    backwards = list(source.read(items[::-1], 32))
    for a, b in zip(images, backwards[::-1], strict=True):  # in the order asked
        np.testing.assert_array_equal(a, b)


def dataset_params():
    for name in list_datasets():
        yield pytest.param(name, marks=[needs_shared_data] if name in SHARED else [])


@pytest.mark.parametrize("name", list(dataset_params()))
def test_every_dataset_keeps_the_source_contract(name, tmp_path):
    if name not in LAYOUTS:
        pytest.fail(f"dataset {name!r} is registered but has no fake layout in LAYOUTS: it would go untested")
    for i, (builder, options) in enumerate(LAYOUTS[name]):
        folder = builder(tmp_path / f"layout{i}")
        root = str(folder) if folder is not None else None
        source = get_source(name, root, options)
        assert isinstance(source, Source) and source.name == name
        assert issubclass(type(source).Options, BaseOptions)
        with pytest.raises(DatasetError, match="bad options"):
            get_source(name, root, {**options, "no_such_option": 1})
        assert source.channels in (1, 3) and isinstance(source.parallel_decode, bool)

        located = source.locate()
        assert isinstance(located, Located) and isinstance(located.root, str) and located.description
        classes = source.classes()
        assert classes and all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes)
        rows = source.rows()
        check_rows(rows, classes, name)
        items = rows["item"].tolist()
        sample = items[:3] + items[-1:]
        check_images(source, sample)
        hashes = source.content_hashes(sample)
        assert len(hashes) == len(sample) and all(isinstance(h, str) and h for h in hashes)
        assert source.content_hashes(sample[::-1]) == hashes[::-1]
        assert isinstance(source.fingerprint(rows), str) and source.fingerprint(rows) == source.fingerprint(rows)
        assert isinstance(source.describe(), str) and source.describe()
        assert isinstance(source.notes, dict)

        manifest = build_manifest(source, tmp_path / f"cache{i}")  # the pipeline every dataset shares
        assert manifest.classes == classes and len(manifest.frame) == len(rows) - int(manifest.notes.get(
            "dropped_duplicates", 0))
        assert set(manifest.frame["split"]) == set(SPLITS)

    # Where its files are missing, a dataset says so as a DatasetError (or needs none, or finds its own copy).
    for root in (tmp_path / "empty", tmp_path / "nowhere", None):
        if root == tmp_path / "empty":
            root.mkdir()
        try:
            get_source(name, str(root) if root else None, LAYOUTS[name][0][1]).locate()
        except DatasetError as e:
            assert name in str(e)


# -- tasks ---------------------------------------------------------------------------------------------------

SIZE = 32
# The tiny backbone of each family (and its kwargs) the task checks use.
TINY = {"vit": ("test_vit", {}), "cnn": ("test_resnet", {}), "unet": ("tiny-sd", {"text_encoder": "minilm"})}
# Each task's `train:` section for a trial that runs in seconds on the CPU.
TINY_TRAIN = {
    "classification": {"epochs": 2, "batch_size": 8},
    "simulated": {"epochs": 2, "epoch_seconds": 0},
    "t2i": {"epochs": 2, "batch_size": 8, "val_pairs": 2, "val_timesteps": [500], "eval_prompts": 2,
            "sample_steps": 1, "fid_features": "efficientnet-lite0", "kid_subset_size": 2, "grid_images": 2},
}
# Known: backbones whose weight check accepts any source (the test fails when that changes: then delete the
# entry). None now: tiny-sd refuses weights other than random.
IGNORES_WEIGHTS: set[tuple[str, str]] = set()


def test_every_task_has_a_tiny_trial_and_every_family_a_tiny_backbone():
    assert set(TINY_TRAIN) == set(list_tasks()), "give each registered task a tiny `train:` section in TINY_TRAIN"
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("name", list_tasks())
def test_task_fields_are_consistent(name):
    task = get_task(name)
    assert task.name == name and task.short
    assert len({get_task(t).short for t in list_tasks()}) == len(list_tasks()), "cell-key prefixes must differ"
    assert callable(task.worker) and callable(task.probe) and callable(task.check_weights)
    assert isinstance(task.train_schema, type) and issubclass(task.train_schema, BaseModel)
    defaults = task.train_schema()
    assert task.train_schema.model_validate(defaults.model_dump()) == defaults
    with pytest.raises(ValidationError):  # a misspelt setting is an error, not ignored
        task.train_schema.model_validate({"no_such_setting": 1})
    assert task.train_schema.model_validate(TINY_TRAIN[name])
    assert isinstance(task.max_epochs(defaults), int) and task.max_epochs(defaults) >= 1
    assert task.families and len(set(task.families)) == len(task.families) and set(task.families) <= set(FAMILIES)
    selection = task.selection(defaults)
    assert isinstance(selection, Selection)
    assert selection.val.startswith("val/") and selection.test.startswith("test/")
    assert isinstance(selection.test_higher_is_better, bool)
    assert isinstance(task.needs_captions, bool) and isinstance(task.needs_classes, bool)


def task_families():
    return [(t, f) for t in list_tasks() for f in get_task(t).families]


@pytest.mark.parametrize(("name", "family"), task_families())
def test_task_probes_its_families_on_the_meta_device(name, family):
    task = get_task(name)
    backbone, kwargs = TINY[family]
    prepared = task.probe(backbone, "full", None, None, SIZE, weights="random", **kwargs)
    assert prepared.trainable_params == prepared.total_params > 0
    assert all(p.is_meta for p in prepared.model.parameters()), "probing must not allocate or read weights"
    misfit = next(m.name for m in list_methods() if family not in {f for e in list_methods() if e.name == m.name
                                                                   for f in e.families})
    with pytest.raises(MethodError, match=misfit):
        task.probe(backbone, misfit, None, None, SIZE, weights="random", **kwargs)


@pytest.mark.parametrize(("name", "family"), task_families())
def test_task_weight_check_refuses_a_bogus_source_by_name(name, family):
    task = get_task(name)
    backbone, kwargs = TINY[family]
    assert isinstance(task.check_weights(backbone, "random", kwargs), str)
    if (name, backbone) in IGNORES_WEIGHTS:
        assert isinstance(task.check_weights(backbone, "no-such-weights", kwargs), str), "refused now: delete entry"
        return
    with pytest.raises(WeightsError, match="no-such-weights"):
        task.check_weights(backbone, "no-such-weights", kwargs)


@pytest.mark.parametrize("name", list_tasks())
def test_task_loop_reports_every_epoch_what_its_selection_names(name, tmp_path):
    task = get_task(name)
    backbone, kwargs = TINY[task.families[0]]
    assert task.families[0] in get_method("full", task.families[0]).families
    config = {
        "task": name, "seed": 0,
        "data": {"name": "synthetic", "options": {"train": 16, "val": 6, "test": 6}, "image_size": SIZE,
                 "cache_dir": str(tmp_path / "cache")},
        "backbone": {"name": backbone, "weights": "random", "kwargs": kwargs},
        "method": {"name": "full"},
        "train": TINY_TRAIN[name],
        "tracking": {"sweep": "t", "cell_key": f"{task.short}/c", "trial_key": f"{task.short}/c/trial=0"},
    }
    reports = run_worker(task.worker, config).reports
    train = task.train_schema.model_validate(TINY_TRAIN[name])
    selection = task.selection(train)
    assert [r[EPOCH] for r in reports] == list(range(1, task.max_epochs(train) + 1))
    for report in reports:
        assert selection.val in report and VAL_BEST_LOSS in report, sorted(report)
        assert math.isfinite(report[SCORE]) and report[SCORE] in (report[selection.val], -report[selection.val])
    assert selection.test in reports[-1] and math.isfinite(reports[-1][selection.test])
    assert not any(k.startswith("test/") for r in reports[:-1] for k in r), "test metrics before the last epoch"
