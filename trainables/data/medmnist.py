"""MedMNIST v2 / MedMNIST+ 2D subsets from their `.npz` files (official train/val/test splits).

Looked up under the data root as `<subset>_<size>.npz` (or `<subset>.npz` for 28 px), directly or in a
`medmnist/` folder, then in the `medmnist` package's cache, then among the files shipped with the project
(BreastMNIST 28 px); when missing, the `medmnist` package downloads it (when online) to its own cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from trainables.data.base import SPLITS, DatasetError, Located, Options, Source, register_dataset
from trainables.utils import reachable

SIZES = (28, 64, 128, 224)
DOWNLOAD_DIR = Path("~/.medmnist").expanduser()
# Real data inside the project (BreastMNIST 28 px, CC BY 4.0; see its README): the last place looked, so the default
# sweep trains on real images on any machine, offline included.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


class MedMNISTOptions(Options):
    subset: str = "breastmnist"
    size: Literal[28, 64, 128, 224] = 28
    download: bool = True


@register_dataset
class MedMNIST(Source):
    name = "medmnist"
    Options = MedMNISTOptions

    @property
    def channels(self) -> int:
        return int(self.info()["n_channels"])

    def candidates(self) -> list[Path]:
        subset, size = self.options.subset, self.options.size
        names = [f"{subset}_{size}.npz"] + ([f"{subset}.npz"] if size == 28 else [])
        roots = [self.root, self.root / "medmnist"] if self.root else []
        roots += [DOWNLOAD_DIR, SHIPPED_DIR]
        return [root / name for root in roots for name in names]

    def info(self) -> dict:
        from medmnist import INFO

        subset = self.options.subset
        if subset not in INFO or subset.endswith("3d"):
            known = ", ".join(k for k in INFO if not k.endswith("3d"))
            raise DatasetError(f"medmnist: unknown 2D subset {subset!r}; known: {known}")
        if INFO[subset]["task"].startswith("multi-label"):
            raise DatasetError(f"medmnist: {subset!r} is multi-label; single-label classification needs another subset")
        return INFO[subset]

    @cached_property
    def path(self) -> Path:
        self.info()
        path = next((p for p in self.candidates() if p.is_file()), None)
        if path is None and self.options.download:
            path = self._download()
        if path is None:
            looked = ", ".join(str(p) for p in self.candidates())
            raise DatasetError(
                f"medmnist: {self.options.subset} at {self.options.size}px not found (looked for {looked}) and "
                "it could not be downloaded; put the .npz file under --data-root (or MEDPEFT_DATA_ROOT), or run "
                "where Zenodo is reachable"
            )
        return path

    def locate(self) -> Located:
        return Located(str(self.path.parent), f"MedMNIST {self.options.subset} {self.options.size}px from {self.path}")

    def _download(self) -> Path | None:
        import medmnist

        if not reachable("zenodo.org"):
            return None
        DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
        cls = getattr(medmnist, self.info()["python_class"])
        try:
            cls(split="test", download=True, root=str(DOWNLOAD_DIR), size=self.options.size)
        except Exception:
            return None
        return next((p for p in self.candidates() if p.is_file()), None)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        path = self.path
        try:
            with np.load(path) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except Exception as e:
            raise DatasetError(f"medmnist: {path} could not be read ({e}); download it again") from e
        for split in SPLITS:
            for kind in ("images", "labels"):
                if f"{split}_{kind}" not in arrays:
                    raise DatasetError(f"medmnist: {path} has no '{split}_{kind}' array; is it a MedMNIST file?")
            labels = arrays[f"{split}_labels"]
            if labels.ndim == 2 and labels.shape[1] != 1:
                raise DatasetError(f"medmnist: {path} has multi-label {split}_labels {labels.shape}")
            # Both (N,) and (N, 1) occur in the wild.
            arrays[f"{split}_labels"] = labels.reshape(-1).astype(np.int64)
        return arrays

    def classes(self) -> list[str]:
        labels = self.info()["label"]
        return [labels[str(i)] for i in range(len(labels))]

    def rows(self) -> pd.DataFrame:
        frames = []
        for split in SPLITS:
            labels = self.arrays[f"{split}_labels"]
            frames.append(
                pd.DataFrame(
                    {
                        "item": [f"{split}/{i}" for i in range(len(labels))],
                        "label": labels,
                        "split": split,
                        "group": "",
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def read(self, items: Iterable[str], size: int) -> Iterator[np.ndarray]:
        for item in items:
            split, _, index = item.partition("/")
            yield self.arrays[f"{split}_images"][int(index)]

    def fingerprint(self, rows: pd.DataFrame) -> str:
        st = self.path.stat()
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}:{self.options.subset}:{self.options.size}"

    def describe(self) -> str:
        shipped = self.path.parent == SHIPPED_DIR
        return f"{self.options.subset}" + (" (the copy shipped with medpeft-sweep)" if shipped else "")
