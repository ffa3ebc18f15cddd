"""HAM10000 (Tschandl et al. 2018) as published on Harvard Dataverse: HAM10000_images_part_1/ and _part_2/
(ISIC_*.jpg) beside HAM10000_metadata.csv. Seven diagnoses; 10,015 images of 7,470 lesions, so the split is
grouped by lesion_id (no lesion in two splits). Licence CC BY-NC 4.0."""

from __future__ import annotations

import pandas as pd

from trainables.data.base import DatasetError, FileSource, class_index, register_dataset

DIAGNOSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")


@register_dataset
class HAM10000(FileSource):
    name = "ham10000"

    def classes(self) -> list[str]:
        return list(DIAGNOSES)

    def rows(self) -> pd.DataFrame:
        meta = pd.read_csv(self.find("HAM10000_metadata.csv", "HAM10000_metadata"))
        missing = {"lesion_id", "image_id", "dx"} - set(meta.columns)
        if missing:
            raise DatasetError(f"dataset 'ham10000': HAM10000_metadata.csv lacks columns {sorted(missing)}")
        root = self.require_root()
        folders = self.existing(*IMAGE_DIRS, kind="dir") or [self.find(*IMAGE_DIRS, kind="dir")]
        where = {p.stem: p.relative_to(root).as_posix() for folder in folders for p in folder.glob("*.jpg")}
        absent = meta.loc[~meta["image_id"].isin(where), "image_id"].tolist()
        if absent:
            raise DatasetError(
                f"dataset 'ham10000': {len(absent)} of {len(meta)} images in HAM10000_metadata.csv are not in "
                f"{' or '.join(IMAGE_DIRS)} (e.g. {', '.join(absent[:5])}); restore them or fix the metadata"
            )
        return pd.DataFrame({
            "item": meta["image_id"].map(where),
            "label": class_index(meta["dx"], DIAGNOSES, self.name),
            "split": "",
            "group": meta["lesion_id"].astype(str),
        })
