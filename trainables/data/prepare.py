"""From a dataset config to what a training loop indexes: one path for every dataset, and one pipeline
(`prepare_dataset`) that the driver's data preparation (sweep/plan/datasets.py), `python -m sweep.inspect dataset`
and a trial without the driver's prepared files all run.

manifest (split fixed by `split_seed`) -> image cache at the training resolution (memory-mapped) -> corrupt
images handled per `on_corrupt` -> nested, stratified fraction of the training split (seeded by the cell's seed).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trainables.config import DataConfig
from trainables.contract import (
    CLASSES_PARAM,
    DATA_SOURCE_PARAM,
    counts_param,
    split_size_param,
)
from trainables.data.base import SPLITS, DatasetError, Source, get_source
from trainables.data.cache import ImageCache, cache_path, corrupt_images, image_cache, open_cache
from trainables.data.manifest import Manifest, build_manifest, default_cache_dir, read_manifest, save_manifest
from trainables.data.splits import fraction_mask


@dataclass
class ImageSplit:
    """A split as rows of the image cache: `images[rows]` are its uint8 (C, S, S) images."""

    images: np.ndarray
    rows: np.ndarray
    labels: torch.Tensor  # int64, aligned with rows
    captions: list[str] | None = None
    groups: np.ndarray | None = None  # patient or lesion id per row ("" where the dataset has none)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: np.ndarray) -> torch.Tensor:
        rows = self.rows[index]
        order = np.argsort(rows)  # ascending reads from the memory map, then back to the batch's order
        gathered = self.images[rows[order]]
        return torch.from_numpy(gathered[np.argsort(order)])


@dataclass
class SplitData:
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    params: dict[str, str] = field(default_factory=dict)  # what goes into the run's params
    manifest: Manifest | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_source(cfg: DataConfig) -> Source:
    return get_source(cfg.name, cfg.root, cfg.options)


def prepare_manifest(cfg: DataConfig, source: Source | None = None, write: bool = True) -> Manifest:
    return build_manifest(source or open_source(cfg), cfg.cache_dir, cfg.split_seed, cfg.val_share, cfg.test_share,
                          cfg.on_duplicate, write=write)


def prepare_cache(cfg: DataConfig, source: Source | None = None, manifest: Manifest | None = None) -> ImageCache:
    source = source or open_source(cfg)
    return image_cache(manifest or prepare_manifest(cfg, source), source, cfg.image_size, cfg.cache_dir,
                       on_corrupt=cfg.on_corrupt)


@dataclass
class PreparedDataset:
    """A dataset checked and ready to index: its manifest (written), its image cache, and the manifest's rows that
    can be read (`row`: the image's row in the cache; undecodable images dropped where the dataset skips them)."""

    source: Source
    manifest: Manifest
    cache: ImageCache
    rows: pd.DataFrame
    cache_was_ready: bool  # the image cache was there before (nothing decoded)
    cache_seconds: float  # spent opening or building the image cache


def prepare_dataset(cfg: DataConfig, source: Source | None = None, check: Callable[[Manifest], None] | None = None,
                    fractions: Sequence[float] = (), on_corrupt: str | None = None, label: str | None = None
                    ) -> PreparedDataset:
    """The one data preparation pipeline: the manifest, `check` on it (the task's class or caption checks), every
    data fraction keeping training images of every class, the image cache, the images it could not decode handled
    per `on_corrupt` (the config's unless given) and the fractions checked again without them; the manifest is
    written last, so a dataset refused leaves no manifest behind. `label`: what the fraction errors call the
    dataset (the spec's key; its source's name by default). Raises DatasetError."""
    source = source or open_source(cfg)
    manifest = prepare_manifest(cfg, source, write=False)
    if check is not None:
        check(manifest)
    rows = manifest.frame.assign(row=np.arange(len(manifest.frame)))
    if fractions:
        check_fractions(rows, cfg, manifest.classes, list(fractions), label or source.name)
    was_ready = cache_path(manifest, cfg.image_size, source.channels, cfg.cache_dir).is_file()
    started = time.monotonic()
    cache = prepare_cache(cfg, source, manifest)
    seconds = time.monotonic() - started
    kept = usable_rows(rows, cache, on_corrupt or cfg.on_corrupt, source.name)
    if fractions and len(kept) < len(rows):  # fewer images once the undecodable ones are skipped
        check_fractions(kept, cfg, manifest.classes, list(fractions), label or source.name)
    save_manifest(manifest)
    return PreparedDataset(source, manifest, cache, kept, was_ready, seconds)


def prepared(cfg: DataConfig) -> tuple[Manifest, ImageCache] | None:
    """The manifest and image cache the driver prepared, from this machine's cache or downloaded from the sweep's
    storage (so nodes need not hold the raw dataset); None when the config names none."""
    if not cfg.prepared:
        return None
    local = Path(cfg.cache_dir or default_cache_dir())
    paths = {kind: local / kind / cfg.prepared[key] for kind, key in (("manifests", "manifest"), ("images", "images"))}
    for kind, path in paths.items():
        if not path.is_file():
            if not cfg.prepared.get("remote"):
                return None
            _download(f"{cfg.prepared['remote']}/{kind}/{path.name}", path)
    return read_manifest(paths["manifests"]), open_cache(paths["images"])


def _download(uri: str, path: Path) -> None:
    import pyarrow.fs as pafs

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return
        fs, remote = pafs.FileSystem.from_uri(uri)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            pafs.copy_files(remote, str(Path(tmp) / path.name), source_filesystem=fs)
            os.replace(Path(tmp) / path.name, path)


def load_splits(cfg: DataConfig, seed: int) -> SplitData:
    """A trial's splits: from the manifest and image cache the driver prepared where there are some, else through
    prepare_dataset here."""
    found = prepared(cfg)
    if found is not None:
        (manifest, cache), describe = found, cfg.prepared.get("source", cfg.name)
        frame = usable_rows(manifest.frame.assign(row=np.arange(len(manifest.frame))), cache, cfg.on_corrupt,
                            cfg.name)
    else:
        dataset = prepare_dataset(cfg)
        manifest, cache, frame, describe = (dataset.manifest, dataset.cache, dataset.rows,
                                            dataset.source.describe())
    train = training_pool(frame, cfg, manifest.classes)
    keep = fraction_mask(train["label"].to_numpy(), cfg.fraction, seed, manifest.classes)
    splits = {"train": train[keep], "val": frame[frame["split"] == "val"], "test": frame[frame["split"] == "test"]}
    data = {name: _split(cache.images, rows) for name, rows in splits.items()}
    params = {
        DATA_SOURCE_PARAM: describe,
        CLASSES_PARAM: str(len(manifest.classes)),
        "data.max_train_images": str(cfg.max_train_images or ""),
        "data.manifest_hash": manifest.hash,
        "data.cache_key": cache.key,
        "data.skipped_corrupt": str(len(cache.errors) if cfg.on_corrupt == "skip" else 0),
        **{f"data.{k}": v for k, v in manifest.notes.items()},
        **{split_size_param(s): str(len(data[s])) for s in SPLITS},
        # Images per class in each split: what the report's trivial classifier (majority class / chance) is
        # computed from, on the same metric as the trials.
        **{counts_param(s): json.dumps(np.bincount(splits[s]["label"], minlength=len(manifest.classes)).tolist())
           for s in SPLITS},
    }
    return SplitData(manifest.classes, data["train"], data["val"], data["test"], params, manifest)


def training_pool(frame: pd.DataFrame, cfg: DataConfig, classes: list[str]) -> pd.DataFrame:
    """The training images the fractions are taken of: the train split, or its fixed stratified subset of
    `max_train_images` (chosen with split_seed)."""
    train = frame[frame["split"] == "train"]
    if cfg.max_train_images and len(train) > cfg.max_train_images:
        train = train[fraction_mask(train["label"].to_numpy(), cfg.max_train_images / len(train), cfg.split_seed,
                                    classes)]
    return train


def check_fractions(frame: pd.DataFrame, cfg: DataConfig, classes: list[str], fractions: list[float],
                    dataset: str) -> None:
    """Every data fraction must keep training images of every class (which images a seed keeps varies, how many
    does not), checked before any training: a class without them would fail every trial of its cells."""
    labels = training_pool(frame, cfg, classes)["label"].to_numpy()
    for fraction in sorted(fractions):
        try:
            fraction_mask(labels, fraction, 0, classes)
        except DatasetError as e:
            raise DatasetError(f"dataset {dataset!r}: {e}") from None


def usable_rows(frame: pd.DataFrame, cache: ImageCache, on_corrupt: str, name: str) -> pd.DataFrame:
    """The rows of `frame` (with its `row` column: the image's row in the cache) whose images the cache could
    decode; with on_corrupt 'error', an undecodable image is a DatasetError naming the files."""
    if not cache.errors:
        return frame
    if on_corrupt == "error":
        raise corrupt_images(cache.errors, name)
    return frame[~frame["row"].isin(list(cache.errors))]


def _split(images: np.ndarray, rows: pd.DataFrame) -> ImageSplit:
    captions = rows["caption"].fillna("").astype(str).tolist() if "caption" in rows else None
    groups = rows["group"].fillna("").astype(str).to_numpy() if "group" in rows else None
    return ImageSplit(images, rows["row"].to_numpy(), torch.tensor(rows["label"].to_numpy(), dtype=torch.int64),
                      captions, groups)


