"""Fitzpatrick17k (Groh et al. 2021): the published CSV (md5hash, label, nine_partition_label,
three_partition_label, fitzpatrick_scale, url) plus a folder of the images the user downloaded, named by md5hash.
Labels at 114, 9 or 3 classes. Rows whose image is missing are reported (count and examples): an error by default,
or, with `missing_images: skip`, dropped and counted in every run's params."""

from __future__ import annotations

from typing import Literal

import pandas as pd

from trainables.data.base import (
    IMAGE_SUFFIXES,
    DatasetError,
    FileSource,
    Options,
    class_index,
    register_dataset,
)

LABEL_COLUMNS = {114: "label", 9: "nine_partition_label", 3: "three_partition_label"}


class FitzpatrickOptions(Options):
    granularity: Literal[114, 9, 3] = 114
    csv: str = "fitzpatrick17k.csv"
    images: str = "images"
    missing_images: Literal["error", "skip"] = "error"


@register_dataset
class Fitzpatrick17k(FileSource):
    name = "fitzpatrick17k"
    Options = FitzpatrickOptions

    def table(self) -> pd.DataFrame:
        table = pd.read_csv(self.find(self.options.csv))
        needed = {"md5hash", LABEL_COLUMNS[self.options.granularity]}
        if needed - set(table.columns):
            raise DatasetError(f"dataset 'fitzpatrick17k': {self.options.csv} lacks columns {sorted(needed - set(table.columns))}")
        return table

    def classes(self) -> list[str]:
        return sorted(self.table()[LABEL_COLUMNS[self.options.granularity]].astype(str).unique())

    def class_count(self) -> int | None:
        # The published labels have exactly 114, 9 and 3 values: the count is known without the CSV.
        return super().class_count() or self.options.granularity

    def rows(self) -> pd.DataFrame:
        table, root = self.table(), self.require_root()
        folder = self.find(self.options.images, kind="dir")
        where = {p.stem: p.relative_to(root).as_posix() for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        present = table["md5hash"].isin(where)
        if not present.all():
            absent = table.loc[~present, "md5hash"].tolist()
            message = (f"dataset 'fitzpatrick17k': {len(absent)} of {len(table)} rows of {self.options.csv} have no "
                       f"image in {folder} (e.g. {', '.join(absent[:5])})")
            if self.options.missing_images == "error":
                raise DatasetError(message + "; download them, or set the dataset's option missing_images: skip")
            self.notes["missing_images"] = str(len(absent))
            table = table[present]
        return pd.DataFrame({
            "item": table["md5hash"].map(where),
            "label": class_index(table[LABEL_COLUMNS[self.options.granularity]], self.classes(), self.name),
            "split": "",
            "group": "",
        })
