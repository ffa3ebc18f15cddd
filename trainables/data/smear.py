"""Cervical cytology ("Smear" in the study), in either public layout:

- SIPaKMeD (Plissiti et al. 2018): im_<Class>/ folders (5 classes), cell crops in im_<Class>/CROPPED/*.bmp (4,049
  cells; `crops: false` uses the full slide images instead);
- Herlev (Jantzen et al. 2005): one folder per class (7 classes) of *.BMP cells, each beside its `-d` mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from trainables.data.base import DatasetError, FileSource, Options, list_images, register_dataset

SIPAKMED = ["Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate"]
HERLEV = ["carcinoma_in_situ", "light_dysplastic", "moderate_dysplastic", "normal_columnar", "normal_intermediate",
          "normal_superficiel", "severe_dysplastic"]


class SmearOptions(Options):
    layout: Literal["auto", "sipakmed", "herlev"] = "auto"
    crops: bool = True


@register_dataset
class Smear(FileSource):
    name = "smear"
    Options = SmearOptions

    def layout(self) -> str:
        if self.options.layout != "auto":
            return self.options.layout
        if self._class_dirs(["im_" + c for c in SIPAKMED], required=False):
            return "sipakmed"
        if self._class_dirs(HERLEV, required=False):
            return "herlev"
        raise DatasetError(f"dataset 'smear': neither the SIPaKMeD (im_Dyskeratotic/, ...) nor the Herlev "
                           f"(carcinoma_in_situ/, ...) layout is under {self.require_root()}")

    def classes(self) -> list[str]:
        return [c.lower() for c in SIPAKMED] if self.layout() == "sipakmed" else list(HERLEV)

    def rows(self) -> pd.DataFrame:
        root, layout = self.require_root(), self.layout()
        names = ["im_" + c for c in SIPAKMED] if layout == "sipakmed" else HERLEV
        rows = []
        for label, folder in enumerate(self._class_dirs(names, required=True)):
            if layout == "sipakmed":
                folder = folder / "CROPPED" if self.options.crops else folder
                images = [p for p in list_images(folder) if self.options.crops or p.parent == folder]
            else:
                images = [p for p in list_images(folder) if not p.stem.lower().endswith("-d")]
            rows += [(p.relative_to(root).as_posix(), label) for p in images]
        return pd.DataFrame({"item": [r[0] for r in rows], "label": [r[1] for r in rows], "split": "", "group": ""})

    def _class_dirs(self, names: list[str], required: bool) -> list[Path]:
        """Each class folder holding images (SIPaKMeD's archive nests im_X/im_X/), at most two levels down."""
        root, found = self.require_root(), []
        for name in names:
            candidates = [p for p in (root / name, root / name / name, *root.glob(f"*/{name}"))
                          if p.is_dir() and any(c.is_file() or c.name == "CROPPED" for c in p.iterdir())]
            if not candidates:
                if required:
                    raise DatasetError(f"dataset 'smear': class folder {name}/ not found under {root}")
                return []
            found.append(candidates[0])
        return found
