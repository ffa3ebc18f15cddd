"""Diabetic retinopathy grading (5 grades) in either public layout:

- APTOS 2019 (Kaggle): train.csv (id_code, diagnosis) and train_images/<id_code>.png;
- EyePACS (Kaggle DR 2015): trainLabels.csv (image, level) and train/<image>.jpeg, where images are named
  <patient>_<left|right>: both eyes of a patient stay in one split.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from trainables.data.base import DatasetError, FileSource, Options, class_index, register_dataset

GRADES = ["no DR", "mild", "moderate", "severe", "proliferative DR"]
LAYOUTS = {  # csv, image folder, id column, grade column, file suffix
    "aptos": ("train.csv", "train_images", "id_code", "diagnosis", ".png"),
    "eyepacs": ("trainLabels.csv", "train", "image", "level", ".jpeg"),
}


class RetinopathyOptions(Options):
    layout: Literal["auto", "aptos", "eyepacs"] = "auto"


@register_dataset
class Retinopathy(FileSource):
    name = "retinopathy"
    Options = RetinopathyOptions

    def layout(self) -> str:
        if self.options.layout != "auto":
            return self.options.layout
        for layout, (csv, *_rest) in LAYOUTS.items():
            if self.existing(csv):
                return layout
        raise DatasetError(f"dataset 'retinopathy': neither APTOS (train.csv + train_images/) nor EyePACS "
                           f"(trainLabels.csv + train/) is under {self.require_root()}")

    def classes(self) -> list[str]:
        return list(GRADES)

    def rows(self) -> pd.DataFrame:
        layout = self.layout()
        csv, folder, id_column, grade_column, suffix = LAYOUTS[layout]
        table = pd.read_csv(self.find(csv))
        if {id_column, grade_column} - set(table.columns):
            raise DatasetError(f"dataset 'retinopathy': {csv} needs the columns {id_column}, {grade_column}")
        images = self.find(folder, kind="dir").relative_to(self.require_root()).as_posix()
        ids = table[id_column].astype(str)
        grades = table[grade_column].astype(int).map(lambda g: GRADES[g] if 0 <= g < len(GRADES) else str(g))
        rows = pd.DataFrame({
            "item": images + "/" + ids + suffix,
            "label": class_index(grades, GRADES, self.name),
            "split": "",
            "group": ids.str.split("_").str[0] if layout == "eyepacs" else "",
        })
        self.check_files(rows)
        return rows
