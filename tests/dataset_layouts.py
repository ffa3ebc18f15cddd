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


RETINA = SHARED_DATA / "medmnist" / "retinamnist_28.npz"


def smdg(root: Path, per_source: int = 12) -> Path:
    """`metadata - standardized.csv` and full-fundus/<name>.png (real colour fundus images: RetinaMNIST's, upscaled),
    with segmentation folders beside them. Three sources: ODIR (both eyes of each patient, named in
    original_name), one with patient_id, one with neither; a third of the images are glaucoma suspects (-1)."""
    with np.load(RETINA) as npz:
        images = npz["train_images"]
    rows, i = [], 0
    for source in ("OIA-ODIR-TRAIN", "PAPILA", "REFUGE1-TRAIN"):
        for k in range(per_source):
            name = f"{source}-{k + 1}"
            Image.fromarray(images[i]).resize((64, 64)).save(_mkdir(root / "full-fundus") / f"{name}.png")
            write_image(_mkdir(root / "optic-disc") / f"{name}.png", i, mode="L")
            patient = k // 2
            rows.append({
                "names": name, "types": (1, 0, -1)[k % 3] if k % 3 != 2 or source != "REFUGE1-TRAIN" else 0,
                "fundus": f"/full-fundus/{name}.png", "oc": f"/optic-cup/{name}.png",
                "patient_id": f"{patient}" if source == "PAPILA" else "",
                "original_name": f"{patient}_{'left' if k % 2 == 0 else 'right'}.jpg" if source == "OIA-ODIR-TRAIN"
                else f"image_{k}.png",
                "eye": "OD" if k % 2 else "OS",
            })
            i += 1
    pd.DataFrame(rows).to_csv(root / "metadata - standardized.csv", index=False)
    return root


def write_dicom(path: Path, image: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8,
                slope: float = 1.0, intercept: float = 0.0) -> None:
    """A greyscale secondary-capture DICOM holding `image` (uint8 grey values, 0 black), stored as MONOCHROME1
    (inverted) or MONOCHROME2 at `bits` bits, with a rescale slope and intercept (a linear modality LUT: the
    picture, scaled over the range the stored bits can hold, is the same whatever they are)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    levels = 2**bits - 1
    raw = image.astype(np.float64) / 255 * levels
    if photometric == "MONOCHROME1":
        raw = levels - raw
    stored = np.round(raw).astype(np.uint16 if bits > 8 else np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = path.stem, "CR"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (16 if bits > 8 else 8), bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def rsna_pneumonia(root: Path, patients: int = 24) -> Path:
    """stage_2_train_images/<patientId>.dcm (real NIH chest X-rays written as DICOM: MONOCHROME1 and MONOCHROME2,
    8- and 12-bit), stage_2_train_labels.csv (a row per box, Target 1 for some patients with two boxes) and
    stage_2_detailed_class_info.csv."""
    nih = sorted((NIH / "train").rglob("*.png"))
    boxes, classes = [], []
    for p in range(patients):
        patient = hashlib.md5(f"patient{p}".encode()).hexdigest()[:8] + f"-{p:04d}"
        image = np.asarray(Image.open(nih[p]).convert("L"))
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", image,
                    photometric="MONOCHROME1" if p % 2 else "MONOCHROME2", bits=12 if p % 3 == 0 else 8)
        positive = p % 3 == 1
        for b in range(2 if positive else 1):
            boxes.append({"patientId": patient, "x": 10.0 + b if positive else "", "y": 12.0 if positive else "",
                          "width": 20.0 if positive else "", "height": 25.0 if positive else "",
                          "Target": int(positive)})
        classes.append({"patientId": patient,
                        "class": "Lung Opacity" if positive else ("Normal" if p % 3 == 0 else
                                                                  "No Lung Opacity / Not Normal")})
    pd.DataFrame(boxes).to_csv(root / "stage_2_train_labels.csv", index=False)
    pd.DataFrame(classes).to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
