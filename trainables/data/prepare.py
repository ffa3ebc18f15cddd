"""From a dataset config to tensors a training loop can index: one path for every dataset.

manifest (the source's, splits filled in) -> data fraction of the training split -> images decoded, centre-cropped
to a square and resized to the training resolution, as uint8 tensors (N, C, H, W) kept in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image

from trainables.config import DataConfig
from trainables.data.base import SPLITS, DatasetError, Source, get_source
from trainables.data.splits import assign_splits, fraction_mask


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SplitData:
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    params: dict[str, str] = field(default_factory=dict)  # what goes into the run's params

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_source(cfg: DataConfig) -> Source:
    return get_source(cfg.name, cfg.root, cfg.options)


def load_splits(cfg: DataConfig, seed: int) -> SplitData:
    source = open_source(cfg)
    classes = source.classes()
    manifest = source.manifest()
    if not source.official_splits:
        manifest = assign_splits(manifest, seed=seed)
    _check_labels(manifest, classes, source.name)
    train = manifest[manifest["split"] == "train"]
    keep = fraction_mask(train["label"].to_numpy(), cfg.fraction, seed, classes)
    manifest = pd.concat([train[keep], manifest[manifest["split"] != "train"]])
    splits = {
        split: _materialize(source, rows, cfg.image_size)
        for split, rows in ((s, manifest[manifest["split"] == s]) for s in SPLITS)
    }
    params = {
        "data.source": source.describe(),
        "data.classes": str(len(classes)),
        **{f"data.n_{s}": str(len(splits[s])) for s in SPLITS},
    }
    return SplitData(classes, splits["train"], splits["val"], splits["test"], params)


def _check_labels(manifest: pd.DataFrame, classes: list[str], name: str) -> None:
    labels = manifest["label"].to_numpy()
    bad = (labels < 0) | (labels >= len(classes))
    if bad.any():
        raise DatasetError(
            f"dataset {name!r}: {int(bad.sum())} labels outside the {len(classes)} classes "
            f"(e.g. {sorted(set(labels[bad].tolist()))[:5]} for items {manifest['item'][bad].head(3).tolist()})"
        )
    for split in SPLITS:
        if not (manifest["split"] == split).any():
            raise DatasetError(f"dataset {name!r}: the {split} split is empty")


def _materialize(source: Source, rows: pd.DataFrame, size: int) -> ImageSplit:
    images = _stack(source.read(rows["item"].tolist()), size)
    return ImageSplit(images, torch.tensor(rows["label"].to_numpy(), dtype=torch.int64))


def _stack(images: Iterable[np.ndarray], size: int) -> torch.Tensor:
    resized = [square_resize(img, size) for img in images]
    rgb = any(img.ndim == 3 for img in resized)
    if rgb:
        resized = [img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1) for img in resized]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()
    return torch.from_numpy(np.stack(resized))[:, None]


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size (RGBA -> RGB); uint8 (H, W) or (H, W, 3)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))
