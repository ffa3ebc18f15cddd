"""SMDG, the Standardized Multi-Channel Dataset for Glaucoma (Kiefer et al. 2023; Kaggle
"multichannel-glaucoma-benchmark-dataset"), as published: `metadata - standardized.csv` beside `full-fundus/`
(and segmentation folders `optic-cup/`, `optic-disc/`, ..., which are masks, not samples).

One row per image: `names` (e.g. `OIA-ODIR-TRAIN-12`; the prefix before the trailing number is the source
dataset), `types` (0 non-glaucoma, 1 glaucoma, -1 glaucoma suspect), `fundus` (`/full-fundus/<names>.png`),
`patient_id` (known for some sources), `original_name` (the file's name in its source). Suspects are left out by
default (`suspects: class` keeps them as a third class). Splits are grouped by patient wherever the data
identifies one: `patient_id`, or a source's own naming of the two eyes of one person (ODIR's `<id>_left.jpg` /
`<id>_right.jpg`, PAPILA's `RET<id>OD` / `RET<id>OS`); other images are their own group.
"""

from __future__ import annotations

import re
from typing import Literal

import pandas as pd

from trainables.data.base import DatasetError, FileSource, Options, register_dataset

METADATA = "metadata - standardized.csv"
TYPES = {0: "non-glaucoma", 1: "glaucoma", -1: "suspect"}
# A source's naming of one patient's eyes, read from `original_name`: the patient is the first group.
EYE_PAIRS = (re.compile(r"^(\d+)_(?:left|right)\b", re.IGNORECASE),  # OIA-ODIR
             re.compile(r"^(RET\d+)O[DS]\b", re.IGNORECASE))  # PAPILA


class SMDGOptions(Options):
    suspects: Literal["exclude", "class"] = "exclude"


@register_dataset
class SMDG(FileSource):
    name = "smdg"
    Options = SMDGOptions

    def classes(self) -> list[str]:
        return [TYPES[0], TYPES[1]] + ([TYPES[-1]] if self.options.suspects == "class" else [])

    def rows(self) -> pd.DataFrame:
        path = self.find(METADATA)
        meta = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"names", "types"} - set(meta.columns)
        if missing:
            raise DatasetError(f"dataset 'smdg': {path.name} lacks the columns {sorted(missing)}")
        types = pd.to_numeric(meta["types"], errors="coerce")
        bad = meta.loc[~types.isin(list(TYPES)), "names"].tolist()
        if bad:
            raise DatasetError(f"dataset 'smdg': {len(bad)} rows of {path.name} have a `types` other than 0, 1 or "
                               f"-1 (e.g. {', '.join(bad[:5])}); fix or remove them")
        keep = types != -1 if self.options.suspects == "exclude" else types.notna()
        suspects = int((~keep).sum())
        if suspects:
            self.notes["suspects_excluded"] = str(suspects)
        meta, types = meta[keep].reset_index(drop=True), types[keep].reset_index(drop=True)
        fundus = meta["fundus"] if "fundus" in meta.columns else pd.Series("", index=meta.index)
        items = fundus.where(fundus.str.strip() != "", "full-fundus/" + meta["names"] + ".png").str.lstrip("/")
        rows = pd.DataFrame({
            "item": items,
            "label": types.map({0: 0, 1: 1, -1: 2}).astype("int64"),
            "split": "",
            "group": [self._group(row) for row in meta.itertuples(index=False)],
        })
        self.check_files(rows, what="fundus images")
        return rows

    @staticmethod
    def _group(row) -> str:
        name = row.names
        source = re.sub(r"-\d+$", "", name)
        patient = str(getattr(row, "patient_id", "") or "").strip()
        if patient and patient.lower() != "nan":
            return f"{source}:{patient}"
        original = str(getattr(row, "original_name", "") or "")
        for pattern in EYE_PAIRS:
            if match := pattern.match(original):
                return f"{source}:{match.group(1)}"
        return name
