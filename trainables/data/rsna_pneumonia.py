"""RSNA Pneumonia Detection Challenge (Kaggle, 2018) as published: `stage_2_train_images/<patientId>.dcm` (one
chest X-ray per patient), `stage_2_train_labels.csv` (patientId, x, y, width, height, Target; one row per
opacity box, or one row with Target 0) and `stage_2_detailed_class_info.csv` (patientId, class: Lung Opacity /
No Lung Opacity / Not Normal / Normal). 26,684 patients.

A patient is positive when any of their rows has Target 1 (`labels: binary`, the study's task); `labels:
detailed` gives the three classes of the detailed file instead. DICOM files are read with pydicom: the modality
LUT (rescale slope and intercept), the stored bit depth, and MONOCHROME1 (inverted greyscale) are honoured, and
each image is decoded once into the image cache like every dataset. One image per patient: the split is by image,
which is by patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from trainables.data.base import DatasetError, FileSource, Options, class_index, register_dataset

LABELS = "stage_2_train_labels.csv"
DETAILED = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
BINARY = ["no pneumonia", "pneumonia"]
DETAILED_CLASSES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


class RSNAOptions(Options):
    labels: Literal["binary", "detailed"] = "binary"


@register_dataset
class RSNAPneumonia(FileSource):
    name = "rsna_pneumonia"
    Options = RSNAOptions
    channels = 1

    def classes(self) -> list[str]:
        return list(BINARY if self.options.labels == "binary" else DETAILED_CLASSES)

    def rows(self) -> pd.DataFrame:
        path = self.find(LABELS)
        boxes = pd.read_csv(path, dtype={"patientId": str})
        if {"patientId", "Target"} - set(boxes.columns):
            raise DatasetError(f"dataset 'rsna_pneumonia': {LABELS} needs the columns patientId and Target")
        target = pd.to_numeric(boxes["Target"], errors="coerce")
        bad = boxes.loc[~target.isin([0, 1]), "patientId"].tolist()
        if bad:
            raise DatasetError(f"dataset 'rsna_pneumonia': {len(bad)} rows of {LABELS} have a Target other than 0 "
                               f"or 1 (e.g. patients {', '.join(bad[:5])}); fix or remove them")
        positive = target.groupby(boxes["patientId"], sort=False).max()
        if self.options.labels == "binary":
            labels = positive.astype("int64")
        else:
            detail = pd.read_csv(self.find(DETAILED), dtype={"patientId": str})
            if {"patientId", "class"} - set(detail.columns):
                raise DatasetError(f"dataset 'rsna_pneumonia': {DETAILED} needs the columns patientId and class")
            named = detail.drop_duplicates("patientId").set_index("patientId")["class"]
            absent = [p for p in positive.index if p not in named.index]
            if absent:
                raise DatasetError(f"dataset 'rsna_pneumonia': {len(absent)} patients of {LABELS} are not in "
                                   f"{DETAILED} (e.g. {', '.join(absent[:5])})")
            named = named.reindex(positive.index).replace({"No Lung Opacity / Not Normal": DETAILED_CLASSES[1]})
            labels = class_index(named, DETAILED_CLASSES, self.name)
        folder = self.find(IMAGES, kind="dir").relative_to(self.require_root()).as_posix()
        rows = pd.DataFrame({
            "item": [f"{folder}/{patient}.dcm" for patient in positive.index],
            "label": labels.to_numpy(),
            "split": "",
            "group": positive.index.to_numpy(),
        })
        self.check_files(rows, what="DICOM files")
        return rows

    def read(self, items: Iterable[str], size: int) -> Iterator[np.ndarray]:
        root = self.require_root()
        for item in items:
            yield read_dicom(root / item)


def read_dicom(path: Path) -> np.ndarray:
    """A greyscale DICOM image as uint8 (H, W): modality LUT (slope/intercept), scaled over the range its stored
    bits can hold, and inverted when MONOCHROME1 (where higher values are darker)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # not DICOM, truncated, or a transfer syntax without a decoder here
        raise DatasetError(f"dataset 'rsna_pneumonia': {path} is not a readable DICOM image ({e}); replace the "
                           "file, or install the decoder its transfer syntax needs (e.g. pylibjpeg)") from None
    if pixels.ndim != 2:
        raise DatasetError(f"dataset 'rsna_pneumonia': {path} holds {pixels.shape} pixels, not one greyscale image")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    bits = int(getattr(ds, "BitsStored", 8))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=np.float64)
    low, high = sorted(apply_modality_lut(stored, ds).astype(np.float64))
    scaled = (values - low) / max(high - low, 1e-9)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
