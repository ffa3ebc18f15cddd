"""A small built-in synthetic image dataset: what a sweep runs on when its spec says `on_missing: synthetic`
and the real data cannot be found. Runs are tagged so nobody mistakes its numbers for medical results.

Each class is a shape (disc, square, ring, cross, then the same shapes brighter) at a random place and size on a
noisy background: learnable by a pretrained backbone in a few epochs, not trivially.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from trainables.data.base import SPLITS, Located, Options, Source, register_dataset

SHAPES = ("disc", "square", "ring", "cross")


class SyntheticOptions(Options):
    num_classes: int = Field(2, ge=2, le=16)
    size: int = Field(28, ge=8, le=256)
    channels: Literal[1, 3] = 1
    train: int = Field(600, ge=2)
    val: int = Field(100, ge=2)
    test: int = Field(200, ge=2)
    seed: int = 0


@register_dataset
class Synthetic(Source):
    name = "synthetic"
    Options = SyntheticOptions

    @property
    def channels(self) -> int:
        return self.options.channels if self.options.channels > 1 else 1

    def locate(self) -> Located:
        return Located("", f"built-in synthetic shapes ({self.options.num_classes} classes, {self.options.size}px)")

    def classes(self) -> list[str]:
        return [f"{SHAPES[c % 4]}{'' if c < 4 else f'-{c // 4}'}" for c in range(self.options.num_classes)]

    @cached_property
    def _data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.options.seed)
        return {split: self._generate(rng, getattr(self.options, split)) for split in SPLITS}

    def _generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        size, k = self.options.size, self.options.num_classes
        labels = np.arange(n) % k  # balanced
        rng.shuffle(labels)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        cy, cx = (rng.uniform(0.3, 0.7, (2, n, 1, 1)) * size).astype(np.float32)
        radius = (rng.uniform(0.12, 0.25, (n, 1, 1)) * size).astype(np.float32)
        dy, dx = np.abs(yy - cy), np.abs(xx - cx)
        dist = np.sqrt(dy**2 + dx**2)
        masks = {
            "disc": dist <= radius,
            "square": np.maximum(dy, dx) <= radius * 0.85,
            "ring": (dist <= radius) & (dist >= radius * 0.55),
            "cross": (np.minimum(dy, dx) <= radius * 0.3) & (np.maximum(dy, dx) <= radius),
        }
        shape = np.stack([masks[SHAPES[c % 4]][i] for i, c in enumerate(labels)])
        brightness = 150 + 40 * (labels // 4)
        images = rng.normal(70, 25, (n, size, size)) + shape * brightness[:, None, None]
        images = np.clip(images, 0, 255).astype(np.uint8)
        if self.options.channels > 1:
            images = np.repeat(images[..., None], self.options.channels, axis=-1)
        return images, labels.astype(np.int64)

    def fingerprint(self, rows: pd.DataFrame) -> str:
        return self.options.model_dump_json()

    def rows(self) -> pd.DataFrame:
        names = self.classes()
        return pd.concat(
            [
                pd.DataFrame({"item": [f"{s}/{i}" for i in range(len(y))], "label": y, "split": s, "group": "",
                              "caption": [f"a bright {names[c]} on a noisy background" for c in y]})
                for s, (_, y) in self._data.items()
            ],
            ignore_index=True,
        )

    def read(self, items: Iterable[str], size: int) -> Iterator[np.ndarray]:
        for item in items:
            split, _, index = item.partition("/")
            yield self._data[split][0][int(index)]
