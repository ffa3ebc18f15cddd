"""What every dataset provides, and the registry that finds datasets by name.

A dataset is a `Source`: it knows its publisher's layout, checks that the files are there (`locate`), lists its
images as a manifest (one row per image: `item`, `label`, `split`, `group`), and decodes images by item. Splits,
data fractions, resizing and caching are done once for all datasets in `trainables.data.prepare`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """Data that is missing, unreadable or inconsistent; the message names the problem and the fix."""


class Options(BaseModel):
    """Base of every dataset's options (the `options:` mapping of a dataset in a sweep spec)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Located:
    root: str  # the directory the data was found in (what trials get as their data root)
    description: str  # e.g. "BreastMNIST 28px from /data/medmnist/breastmnist.npz"


class Source(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    # Where the manifest's `split` column comes from: "official" splits, or "" rows split by us.
    official_splits: ClassVar[bool] = False

    def __init__(self, root: str | None, options: Options) -> None:
        self.root = Path(root).expanduser() if root else None
        self.options = options

    @abstractmethod
    def locate(self) -> Located:
        """Check the files are where the layout says (downloading if the dataset can); raise DatasetError."""

    @abstractmethod
    def classes(self) -> list[str]:
        """Class names, indexed by label."""

    @abstractmethod
    def manifest(self) -> pd.DataFrame:
        """One row per image: item (path or reference), label (int), split ('train'/'val'/'test' or ''),
        group (patient/lesion id or '')."""

    @abstractmethod
    def read(self, items: Iterable[str]) -> Iterator[np.ndarray]:
        """Decoded images (H, W) or (H, W, C) uint8, in the order of `items`."""

    def describe(self) -> str:
        return self.name

    def require_root(self) -> Path:
        if self.root is None:
            raise DatasetError(
                f"dataset {self.name!r}: no data root given; pass --data-root DIR or set MEDPEFT_DATA_ROOT"
            )
        if not self.root.is_dir():
            raise DatasetError(f"dataset {self.name!r}: data root {self.root} does not exist or is not a folder")
        return self.root


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
