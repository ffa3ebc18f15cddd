"""Builders of small datasets in their publishers' layouts, in a temporary folder: from the real images in
../shared/data where a sample exists (HAM10000 and BUSI copied into the official structure with their real
metadata), and from small generated images where none does."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.conftest import SHARED_DATA

HAM = SHARED_DATA / "ham10000_200x150"
BUSI = SHARED_DATA / "busi_256"
NIH = SHARED_DATA / "nih_cxr14_64"


def write_image(path: Path, seed: int, size=(40, 32), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def ham10000(root: Path, per_class: int = 20) -> Path:
    """HAM10000_images_part_1/ and _part_2/ with real images, and the real metadata rows of those images."""
    labels = pd.read_csv(HAM / "labels.csv")
    chosen = labels.groupby("dx", group_keys=False).head(per_class).reset_index(drop=True)
    for i, row in chosen.iterrows():
        part = "HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2"
        (root / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(HAM / row["filename"], root / part / f"{row['image_id']}.jpg")
    meta = pd.read_csv(HAM / "HAM10000_metadata_full.csv")
    meta[meta["image_id"].isin(chosen["image_id"])].to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def busi(root: Path, per_class: int = 15) -> Path:
    """Dataset_BUSI_with_GT/<class>/<class> (N).png with real images, each beside a `_mask` file."""
    labels = pd.read_csv(BUSI / "labels.csv")
    for _, row in labels.groupby("label", group_keys=False).head(per_class).iterrows():
        target = root / "Dataset_BUSI_with_GT" / row["label"] / row["original_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSI / row["filename"], target)
        write_image(target.with_name(target.stem + "_mask.png"), 0, mode="L")
    return root


def fitzpatrick17k(root: Path, missing: int = 2) -> Path:
    """fitzpatrick17k.csv (the published columns) and images/<md5hash>.jpg, some rows without an image."""
    conditions = [("psoriasis", "inflammatory", "non-neoplastic"), ("melanoma", "malignant melanoma", "malignant"),
                  ("acne", "inflammatory", "non-neoplastic"), ("basal cell carcinoma", "malignant epidermal", "malignant"),
                  ("seborrheic keratosis", "benign epidermal", "benign"), ("dermatofibroma", "benign dermal", "benign")]
    rows = []
    for i in range(90):
        label, nine, three = conditions[i % len(conditions)]
        md5 = hashlib.md5(f"image{i}".encode()).hexdigest()
        rows.append({"md5hash": md5, "fitzpatrick_scale": 1 + i % 6, "fitzpatrick_centaur": 1 + i % 6,
                     "label": label, "nine_partition_label": nine, "three_partition_label": three,
                     "qc": "", "url": f"https://example.org/{md5}.jpg", "url_alphanum": md5})
        if i >= missing:
            write_image(root / "images" / f"{md5}.jpg", i)
    pd.DataFrame(rows).to_csv(root / "fitzpatrick17k.csv", index=False)
    return root


def sipakmed(root: Path, per_class: int = 12) -> Path:
    for c, name in enumerate(["Dyskeratotic", "Koilocytotic", "Metaplastic", "Parabasal", "Superficial-Intermediate"]):
        folder = root / f"im_{name}" / f"im_{name}"
        for i in range(per_class):
            write_image(folder / "CROPPED" / f"{i + 1:03d}_{i % 3 + 1:02d}.bmp", c * 100 + i)
        write_image(folder / "001.bmp", c, size=(120, 90))  # a full slide image, not a cell crop
    return root


def herlev(root: Path, per_class: int = 8) -> Path:
    classes = ["carcinoma_in_situ", "light_dysplastic", "moderate_dysplastic", "normal_columnar",
               "normal_intermediate", "normal_superficiel", "severe_dysplastic"]
    for c, name in enumerate(classes):
        for i in range(per_class):
            stem = f"1539{c:02d}{i:03d}-1539{c:02d}{i:03d}-001"
            write_image(root / name / f"{stem}.BMP", c * 100 + i)
            write_image(root / name / f"{stem}-d.bmp", 0, mode="L")  # the segmentation mask
    return root


def aptos(root: Path, n: int = 60) -> Path:
    ids = [hashlib.md5(str(i).encode()).hexdigest()[:12] for i in range(n)]
    for i, name in enumerate(ids):
        write_image(root / "train_images" / f"{name}.png", i)
    pd.DataFrame({"id_code": ids, "diagnosis": [i % 5 for i in range(n)]}).to_csv(root / "train.csv", index=False)
    return root


def eyepacs(root: Path, patients: int = 40) -> Path:
    names = [f"{10 + p}_{eye}" for p in range(patients) for eye in ("left", "right")]
    for i, name in enumerate(names):
        write_image(root / "train" / f"{name}.jpeg", i)
    pd.DataFrame({"image": names, "level": [(i // 2) % 5 for i in range(len(names))]}).to_csv(
        root / "trainLabels.csv", index=False)
    return root


def mimic_cxr(root: Path, studies: int = 24) -> Path:
    """files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom>.jpg with the split and metadata CSVs (gzipped, as published) and a
    report per study. Images are real NIH chest X-rays standing in for MIMIC's (credentialed) ones."""
    nih = sorted((NIH / "train").rglob("*.png"))
    split_rows, meta_rows = [], []
    for s in range(studies):
        subject, study = 10000000 + s // 2, 50000000 + s
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        for v, view in enumerate(("PA", "LATERAL")):
            dicom = f"{s:04d}{v}abc-dicom"
            Image.open(nih[(2 * s + v) % len(nih)]).convert("L").save(folder / f"{dicom}.jpg")
            patient = s // 2  # the official split is by patient
            split = "train" if patient < studies * 0.35 else "validate" if patient < studies * 0.42 else "test"
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            meta_rows.append({"dicom_id": dicom, "ViewPosition": view})
        impression = "" if s == 3 else f"No acute cardiopulmonary process {s}."
        (folder.parent / f"s{study}.txt").write_text(
            "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS:  The lungs are clear. Heart size is normal."
            "\n\n" + (f" IMPRESSION:  {impression}\n" if impression else ""))
    for name, rows in (("mimic-cxr-2.0.0-split.csv.gz", split_rows), ("mimic-cxr-2.0.0-metadata.csv.gz", meta_rows)):
        with gzip.open(root / name, "wt") as f:
            pd.DataFrame(rows).to_csv(f, index=False)
    return root
