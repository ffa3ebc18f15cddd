"""What every dataset provides, and the registry that finds datasets by name.

A dataset is a `Source`: it knows its publisher's layout, checks that the files are there (`locate`), lists its
images (`rows`: one per image with `item`, `label`, `split`, `group`, and `caption` where there is one), hashes
and decodes images by item. Manifests, splits, data fractions, resizing and the image cache are shared by all
datasets (trainables.data.manifest, .cache, .prepare).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """Data that is missing, unreadable or inconsistent; the message names the problem and the fix."""


class Options(BaseModel):
    """Base of every dataset's options (the `options:` mapping of a dataset in a sweep spec)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Located:
    root: str  # the folder the data was found in (what trials get as their data root)
    description: str  # e.g. "BreastMNIST 28px from /data/medmnist/breastmnist.npz"


class Source(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    channels: int = 3  # images are decoded to 1 (grey) or 3 (RGB) channels
    parallel_decode: ClassVar[bool] = False  # worth decoding in worker processes (image files, not arrays)

    def __init__(self, root: str | None, options: Options) -> None:
        self.root = Path(root).expanduser() if root else None
        self.options = options
        self.notes: dict[str, str] = {}  # what rows() had to leave out, for the run's params

    @abstractmethod
    def locate(self) -> Located:
        """Check the files are where the layout says (downloading if the dataset can); raise DatasetError."""

    @abstractmethod
    def classes(self) -> list[str]:
        """Class names, indexed by label."""

    @abstractmethod
    def rows(self) -> pd.DataFrame:
        """One row per image: item, label (int), split ('train'/'val'/'test', or '' to be assigned), group
        (patient/lesion id, or ''), and optionally caption."""

    @abstractmethod
    def read(self, items: Iterable[str], size: int) -> Iterator[np.ndarray]:
        """Decoded images, uint8 (H, W) or (H, W, 3), in the order of `items` (`size` is a decoding hint)."""

    def class_count(self) -> int | None:
        """How many classes the dataset has: from its files where only they can tell (and they are here), else what
        its publisher fixed; None where neither is known (what a plan sizes each classifier's head by)."""
        try:
            return len(self.classes())
        except DatasetError:
            return None

    def content_hashes(self, items: list[str]) -> list[str]:
        """A hash of each image's content (duplicate detection, manifest identity)."""
        return [hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()[:20] for img in self.read(items, 0)]

    def fingerprint(self, rows: pd.DataFrame) -> str:
        """Cheap identity of the data as it is now (reuses the manifest while nothing changed)."""
        return ""

    def describe(self) -> str:
        return self.name

    def require_root(self) -> Path:
        if self.root is None:
            raise DatasetError(
                f"dataset {self.name!r}: no data root given; pass --data-root DIR or set MEDPEFT_DATA_ROOT"
            )
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset {self.name!r}: data root {self.root} does not exist or is not a folder; pass --data-root "
                "DIR (a dataset's own root is taken relative to it) or fix the dataset's root in the spec"
            )
        return self.root


class FileSource(Source):
    """A dataset of image files under its root; items are paths relative to the root."""

    parallel_decode = True

    def locate(self) -> Located:
        rows = self.rows()  # a layout's rows() checks its folders and metadata files
        return Located(str(self.require_root()), f"{self.describe()}: {len(rows)} images under {self.root}")

    def read(self, items: Iterable[str], size: int) -> Iterator[np.ndarray]:
        root = self.require_root()
        for item in items:
            yield decode_file(root / item, self.channels, size)

    def content_hashes(self, items: list[str]) -> list[str]:
        root = self.require_root()
        return [file_hash(root / item) for item in items]

    def fingerprint(self, rows: pd.DataFrame) -> str:
        root, digest = self.require_root(), hashlib.sha1()
        for item in rows["item"]:
            try:
                st = os.stat(root / item)
                digest.update(f"{item}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(f"{item}:missing;".encode())
        return digest.hexdigest()

    def existing(self, *names: str, kind: str = "file") -> list[Path]:
        """Those of `names` (relative to the root, matched case-insensitively) that exist."""
        root = self.require_root()
        paths = [_case_insensitive(root, name) for name in names]
        return [p for p in paths if p is not None and (p.is_file() if kind == "file" else p.is_dir())]

    def find(self, *names: str, kind: str = "file") -> Path:
        """The first of `names` that exists, or a DatasetError naming what is missing and where."""
        found = self.existing(*names, kind=kind)
        if found:
            return found[0]
        root = self.require_root()
        raise DatasetError(
            f"dataset {self.name!r}: {kind} {' or '.join(names)} not found under {root}; point --data-root (or the "
            f"dataset's root) at the folder of the published layout"
        )

    def check_files(self, rows: pd.DataFrame, what: str = "images") -> None:
        """Every listed image must exist: missing ones are reported (count and examples), never dropped."""
        root = self.require_root()
        missing = [item for item in rows["item"] if not (root / item).is_file()]
        if missing:
            raise DatasetError(
                f"dataset {self.name!r}: {len(missing)} of {len(rows)} {what} listed in the metadata are missing "
                f"under {root} (e.g. {', '.join(missing[:5])}); restore them or fix the metadata"
            )


def _case_insensitive(root: Path, relative: str) -> Path | None:
    path = root / relative
    if path.exists():
        return path
    current = root
    for part in Path(relative).parts:
        if not current.is_dir():
            return None
        match = next((p for p in current.iterdir() if p.name.lower() == part.lower()), None)
        if match is None:
            return None
        current = match
    return current


def list_images(folder: Path, exclude_suffix: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not p.stem.lower().endswith(exclude_suffix))


def file_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:20]


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
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


def decode_file(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file as uint8 grey (H, W) or RGB (H, W, 3); JPEGs are decoded at reduced scale when `size` allows."""
    from PIL import Image

    with Image.open(path) as image:
        if size and image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (size, size))
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale (X-rays): scale to 8 bits
            array = np.asarray(image, dtype=np.float32)
            peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
            image = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8))
        return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def class_index(labels: pd.Series, classes: list[str], name: str) -> pd.Series:
    """Labels given by name, as indices into `classes`; a label outside the class list is an error."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels.astype(str)) - set(index))
    if unknown:
        raise DatasetError(f"dataset {name!r}: labels {unknown[:5]} are not among its classes {classes}")
    return labels.astype(str).map(index).astype(np.int64)


def normalise_split(values: pd.Series, name: str) -> pd.Series:
    lowered = values.fillna("").astype(str).str.strip().str.lower()
    unknown = sorted(set(lowered) - set(SPLIT_ALIASES) - {""})
    if unknown:
        raise DatasetError(f"dataset {name!r}: unknown split names {unknown[:5]}; use train / val / test")
    return lowered.map(lambda s: SPLIT_ALIASES.get(s, ""))


_DATASETS: dict[str, type[Source]] = {}


def register_dataset(cls: type[Source]) -> type[Source]:
    if cls.name in _DATASETS:
        raise ValueError(f"dataset {cls.name!r} registered twice")
    _DATASETS[cls.name] = cls
    return cls


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def get_source(name: str, root: str | None, options: dict[str, Any]) -> Source:
    if name not in _DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    cls = _DATASETS[name]
    try:
        parsed = cls.Options.model_validate(options)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise DatasetError(f"dataset {name!r}: bad options: {problems}") from None
    return cls(root, parsed)
