"""BreastUS: the Breast Ultrasound Images dataset (BUSI, Al-Dhabyani et al. 2020) as published:
Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png, each beside its `_mask` images (segmentation
masks, not images to classify). 780 images of 600 patients, no patient IDs and no official split."""

from __future__ import annotations

import pandas as pd

from trainables.data.base import FileSource, list_images, register_dataset

CLASSES = ["benign", "malignant", "normal"]


@register_dataset
class BreastUS(FileSource):
    name = "breastus"
    channels = 1  # greyscale ultrasound (stored as RGB PNG)

    def classes(self) -> list[str]:
        return list(CLASSES)

    def rows(self) -> pd.DataFrame:
        root = self.require_root()
        base = self.find("Dataset_BUSI_with_GT", kind="dir") if not (root / "benign").is_dir() else root
        rows = []
        for label, name in enumerate(CLASSES):
            folder = self.find(str((base / name).relative_to(root)), kind="dir")
            for path in list_images(folder):
                if "_mask" not in path.stem:
                    rows.append((path.relative_to(root).as_posix(), label))
        return pd.DataFrame({"item": [r[0] for r in rows], "label": [r[1] for r in rows], "split": "", "group": ""})
