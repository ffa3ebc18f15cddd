"""Every dataset in its publisher's layout: loading, splits, manifests, the image cache, and bad input."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests import dataset_layouts as layouts
from tests.conftest import needs_shared_data
from trainables.config import DataConfig
from trainables.data import DatasetError, build_manifest, get_source, image_cache, load_splits
from trainables.data.splits import fraction_mask


def load(name, root, cache, seed=0, **kw):
    options = kw.pop("options", {})
    cfg = DataConfig(name=name, root=str(root), options=options, image_size=kw.pop("image_size", 32),
                     cache_dir=str(cache), **kw)
    return load_splits(cfg, seed)


def manifest(name, root, cache, **options):
    return build_manifest(get_source(name, str(root), options), cache)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@needs_shared_data
def test_ham10000_published_layout_grouped_by_lesion(tmp_path, cache):
    root = layouts.ham10000(tmp_path / "ham")
    data = load("ham10000", root, cache)
    assert data.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(data.train) + len(data.val) + len(data.test) == 140
    frame = data.manifest.frame
    assert frame["path"].str.startswith(("HAM10000_images_part_1/", "HAM10000_images_part_2/")).all()
    assert (frame.groupby("group")["split"].nunique() == 1).all(), "a lesion is in two splits"
    assert frame["group"].str.startswith("HAM_").all()
    assert data.train.batch(np.arange(4)).shape == (4, 3, 32, 32)


@needs_shared_data
def test_busi_masks_are_not_images_to_classify(tmp_path, cache):
    root = layouts.busi(tmp_path / "busi")
    m = manifest("breastus", root, cache)
    assert m.classes == ["benign", "malignant", "normal"] and len(m.frame) == 45
    assert not m.frame["path"].str.contains("_mask").any()
    assert m.frame["path"].str.startswith("Dataset_BUSI_with_GT/").all()
    assert load("breastus", root, cache).train.images.shape[1] == 1  # greyscale ultrasound


def test_fitzpatrick17k_granularity_and_missing_images(tmp_path, cache):
    root = layouts.fitzpatrick17k(tmp_path / "fitz", missing=2)
    with pytest.raises(DatasetError, match=r"2 of 90 rows .* have no image .*missing_images: skip"):
        manifest("fitzpatrick17k", root, cache)
    counts = {g: len(manifest("fitzpatrick17k", root, cache, granularity=g, missing_images="skip").classes)
              for g in (114, 9, 3)}
    assert counts == {114: 6, 9: 5, 3: 3}
    data = load("fitzpatrick17k", root, cache, options={"granularity": 3, "missing_images": "skip"})
    assert data.params["data.missing_images"] == "2"
    assert len(data.train) + len(data.val) + len(data.test) == 88


@pytest.mark.parametrize(("builder", "classes", "images"), [(layouts.sipakmed, 5, 60), (layouts.herlev, 7, 56)])
def test_smear_sipakmed_and_herlev(tmp_path, cache, builder, classes, images):
    root = builder(tmp_path / "smear")
    m = manifest("smear", root, cache)
    assert len(m.classes) == classes and len(m.frame) == images
    assert not m.frame["path"].str.lower().str.endswith("-d.bmp").any()  # Herlev masks
    if builder is layouts.sipakmed:
        assert m.frame["path"].str.contains("/CROPPED/").all()
        assert len(get_source("smear", str(root), {"crops": False}).rows()) == 5  # the full slide images


def test_retinopathy_aptos_and_eyepacs_patients(tmp_path, cache):
    aptos = manifest("retinopathy", layouts.aptos(tmp_path / "aptos"), cache)
    assert len(aptos.frame) == 60 and aptos.classes[0] == "no DR"
    eyepacs = manifest("retinopathy", layouts.eyepacs(tmp_path / "eyepacs"), cache)
    assert len(eyepacs.frame) == 80
    assert (eyepacs.frame.groupby("group")["split"].nunique() == 1).all(), "a patient's two eyes were split"


@needs_shared_data
def test_mimic_cxr_pairs_images_and_report_sections(tmp_path, cache):
    root = layouts.mimic_cxr(tmp_path / "mimic")
    m = manifest("mimic_cxr", root, cache)
    assert len(m.frame) == 24  # frontal (PA) views only; the lateral ones are filtered out
    assert set(m.frame["split"]) == {"train", "val", "test"}
    captions = dict(zip(m.frame["path"], m.frame["caption"], strict=True))
    assert any(c.startswith("No acute cardiopulmonary process") for c in captions.values())
    assert m.notes["caption_fallback_full_report"] == "1"  # the study without an impression
    findings = manifest("mimic_cxr", root, cache, section="findings")
    assert set(findings.frame["caption"]) == {"The lungs are clear. Heart size is normal."}
    assert len(manifest("mimic_cxr", root, cache, views=None).frame) == 48
    assert (m.frame.groupby("group")["split"].nunique() == 1).all()


@needs_shared_data
def test_imagefolder_with_split_folders_and_csv_with_captions(cache):
    folder = manifest("imagefolder", layouts.NIH, cache)
    assert folder.classes == ["0_normal", "1_abnormal"]
    assert folder.frame["split"].value_counts().to_dict() == {"train": 600, "val": 200, "test": 200}
    table = manifest("csv", layouts.NIH, cache, path_column="filename", channels=1)
    assert table.frame["caption"].str.startswith("a chest x-ray").all()
    assert table.hash != folder.hash


@needs_shared_data
def test_manifests_are_deterministic_and_fractions_nested(tmp_path):
    root = layouts.ham10000(tmp_path / "ham")
    first = manifest("ham10000", root, tmp_path / "cache1")
    second = manifest("ham10000", root, tmp_path / "cache2")
    assert first.hash == second.hash and first.frame.equals(second.frame)
    assert first.path.suffix == ".parquet" and pd.read_parquet(first.path).equals(first.frame)
    train = first.frame[first.frame["split"] == "train"]
    kept = {f: set(train["path"][fraction_mask(train["label"].to_numpy(), f, 1, first.classes)])
            for f in (0.25, 0.5, 1.0)}
    assert kept[0.25] < kept[0.5] < kept[1.0]
    assert set(load("ham10000", root, tmp_path / "c", seed=1, fraction=0.5).train.rows) <= set(
        load("ham10000", root, tmp_path / "c", seed=1, fraction=1.0).train.rows)


# -- the image cache ------------------------------------------------------------------------------------------


def test_cache_is_built_once_and_memory_mapped(tmp_path, cache):
    root = layouts.aptos(tmp_path / "aptos")
    source = get_source("retinopathy", str(root), {})
    m = build_manifest(source, cache)
    first = image_cache(m, source, 24, cache)
    built = first.path.stat().st_mtime_ns
    again = image_cache(m, source, 24, cache)
    assert again.path == first.path and again.path.stat().st_mtime_ns == built
    assert not again.images.flags.writeable  # a view of the mapped file, not a copy
    original = Image.open(root / m.frame["path"][0]).convert("RGB")  # 40 x 32: the centre 32 x 32, resized
    expected = np.asarray(original.crop((4, 0, 36, 32)).resize((24, 24), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(again.images[0].astype(int) - expected).mean() < 3
    assert image_cache(m, source, 16, cache).path != first.path  # other preprocessing, other file


def _build_in_process(args):
    root, cache = args
    source = get_source("retinopathy", root, {})
    c = image_cache(build_manifest(source, cache), source, 24, cache, workers=1)
    return str(c.path), os.stat(c.path).st_mtime_ns


def test_concurrent_trials_build_the_cache_once(tmp_path, cache):
    root = layouts.aptos(tmp_path / "aptos", n=200)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_build_in_process, [(str(root), str(cache))] * 3)
    assert len(set(results)) == 1  # one file, written once
    assert len(list((cache / "images").glob("*.arrow"))) == 1
    assert not list((cache / "images").glob(".build-*"))


# -- bad input -----------------------------------------------------------------------------------------------


def test_missing_root_and_metadata_name_the_problem(tmp_path, cache):
    with pytest.raises(DatasetError, match="does not exist"):
        manifest("ham10000", tmp_path / "nowhere", cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"HAM10000_metadata\.csv .*not found"):
        manifest("ham10000", tmp_path / "empty", cache)
    with pytest.raises(DatasetError, match="no data root"):
        get_source("breastus", None, {}).rows()


def test_corrupt_images_are_listed_or_skipped(tmp_path, cache):
    root = layouts.aptos(tmp_path / "aptos")
    broken = sorted((root / "train_images").iterdir())[:2]
    for i, path in enumerate(broken):
        path.write_bytes(f"not a png {i}".encode())
    with pytest.raises(DatasetError, match="2 images could not be decoded") as error:
        load("retinopathy", root, cache)
    assert all(p.name in str(error.value) for p in broken)
    data = load("retinopathy", root, cache, on_corrupt="skip")
    assert data.params["data.skipped_corrupt"] == "2"
    assert len(data.train) + len(data.val) + len(data.test) == 58


def test_labels_outside_the_class_list(tmp_path, cache):
    root = tmp_path / "csv"
    for i in range(6):
        layouts.write_image(root / f"{i}.png", i)
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": ["a", "b", "c", "a", "b", "zebra"]}).to_csv(
        root / "labels.csv", index=False)
    with pytest.raises(DatasetError, match=r"labels \['zebra'\] are not among its classes"):
        manifest("csv", root, cache, classes=["a", "b", "c"])


def test_duplicate_images_across_splits(tmp_path, cache):
    root = tmp_path / "folder"
    seeds = iter(range(10_000))
    for split in ("train", "val", "test"):
        for c in ("x", "y"):
            for i in range(4):
                layouts.write_image(root / split / c / f"{i}.png", next(seeds))
    shutil.copy(root / "test" / "x" / "0.png", root / "train" / "x" / "copy.png")
    with pytest.raises(DatasetError, match=r"1 images appear in more than one split .*train/x/copy.png"):
        manifest("imagefolder", root, cache)
    data = load("imagefolder", root, cache, on_duplicate="drop")
    assert data.params["data.dropped_duplicates"] == "1" and len(data.train) == 8


def test_empty_class_after_a_fraction(tmp_path, cache):
    root = tmp_path / "folder"
    seeds = iter(range(10_000))
    for c, n in (("common", 40), ("rare", 2)):
        for i in range(n):
            for split in ("train", "val", "test"):
                layouts.write_image(root / split / c / f"{i}.png", next(seeds))
    with pytest.raises(DatasetError, match="leaves class 'rare' without training images"):
        load("imagefolder", root, cache, fraction=0.1)


def test_manifest_is_rebuilt_when_a_file_changes(tmp_path, cache):
    root = layouts.aptos(tmp_path / "aptos")
    first = manifest("retinopathy", root, cache)
    time.sleep(0.01)
    layouts.write_image(root / "train_images" / (first.frame["path"][0].split("/")[-1]), 999)
    assert manifest("retinopathy", root, cache).hash != first.hash


@needs_shared_data
def test_smdg_published_layout_suspects_and_patient_groups(tmp_path, cache):
    root = layouts.smdg(tmp_path / "smdg")
    m = manifest("smdg", root, cache)
    assert m.classes == ["non-glaucoma", "glaucoma"]
    assert m.frame["path"].str.startswith("full-fundus/").all()  # the segmentation folders are not samples
    assert len(m.frame) == 36 - 8 and m.notes["suspects_excluded"] == "8"  # ODIR and PAPILA: 4 suspects each
    groups = m.frame.set_index("path")["group"]
    # ODIR: <id>_left.jpg and <id>_right.jpg are one patient; PAPILA: patient_id; REFUGE: each image its own.
    assert groups["full-fundus/OIA-ODIR-TRAIN-1.png"] == groups["full-fundus/OIA-ODIR-TRAIN-2.png"] == "OIA-ODIR-TRAIN:0"
    assert groups["full-fundus/PAPILA-1.png"] == "PAPILA:0"
    assert groups["full-fundus/REFUGE1-TRAIN-1.png"] == "REFUGE1-TRAIN-1"
    assert (m.frame.groupby("group")["split"].nunique() == 1).all(), "a patient is in two splits"
    kept = manifest("smdg", root, cache, suspects="class")
    assert kept.classes == ["non-glaucoma", "glaucoma", "suspect"] and len(kept.frame) == 36
    data = load("smdg", root, cache)
    assert data.train.images.shape[1:] == (3, 32, 32)


@needs_shared_data
def test_smdg_bad_rows_are_errors_naming_the_file(tmp_path, cache):
    root = layouts.smdg(tmp_path / "smdg")
    meta = pd.read_csv(root / "metadata - standardized.csv", keep_default_na=False)
    (root / "full-fundus" / "PAPILA-2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 28 fundus images listed in the metadata are missing.*full-fundus/PAPILA-2.png"):
        manifest("smdg", root, cache)
    meta.loc[0, "types"] = 3
    meta.to_csv(root / "metadata - standardized.csv", index=False)
    with pytest.raises(DatasetError, match=r"`types` other than 0, 1 or -1 \(e.g. OIA-ODIR-TRAIN-1\)"):
        manifest("smdg", root, cache)


@needs_shared_data
def test_rsna_pneumonia_dicom_labels_and_decoding(tmp_path, cache):
    root = layouts.rsna_pneumonia(tmp_path / "rsna")
    m = manifest("rsna_pneumonia", root, cache)
    assert m.classes == ["no pneumonia", "pneumonia"] and len(m.frame) == 24  # one image per patient
    assert m.frame["label"].sum() == 8  # patients with Target 1 (two boxes each, counted once)
    assert m.frame["path"].str.match(r"stage_2_train_images/.*\.dcm$").all()
    assert (m.frame["group"] == m.frame["path"].str.extract(r"/(.*)\.dcm$")[0]).all()  # split by patient
    detailed = manifest("rsna_pneumonia", root, cache, labels="detailed")
    assert detailed.classes == ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
    assert np.bincount(detailed.frame["label"], minlength=3).tolist() == [8, 8, 8]
    # The pixels: MONOCHROME1 (inverted) and 12-bit files decode to the X-ray as it looks (0 black).
    nih = sorted((layouts.NIH / "train").rglob("*.png"))
    source = get_source("rsna_pneumonia", str(root), {})
    items = sorted(m.frame["path"], key=lambda p: int(p[-8:-4]))
    for p, image in enumerate(source.read(items[:4], 0)):
        expected = np.asarray(Image.open(nih[p]).convert("L")).astype(int)
        assert np.abs(image.astype(int) - expected).max() <= 1, f"patient {p} decoded wrongly"
    data = load("rsna_pneumonia", root, cache)
    assert data.train.images.shape[1:] == (1, 32, 32)


def test_rsna_modality_lut_and_unreadable_dicom(tmp_path, cache):
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    plain, rescaled = tmp_path / "plain.dcm", tmp_path / "rescaled.dcm"
    layouts.write_dicom(plain, gradient, bits=12)
    layouts.write_dicom(rescaled, gradient, bits=12, slope=2.0, intercept=-1024.0)
    from trainables.data.rsna_pneumonia import read_dicom

    np.testing.assert_array_equal(read_dicom(rescaled), read_dicom(plain))
    assert np.abs(read_dicom(plain).astype(int) - gradient).max() <= 1
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file at all")
    with pytest.raises(DatasetError, match=r"broken.dcm is not a readable DICOM image"):
        read_dicom(broken)


@needs_shared_data
def test_rsna_pneumonia_bad_rows_are_errors_naming_the_file(tmp_path, cache):
    root = layouts.rsna_pneumonia(tmp_path / "rsna", patients=12)
    labels = pd.read_csv(root / "stage_2_train_labels.csv", dtype={"patientId": str})
    missing = sorted((root / "stage_2_train_images").glob("*.dcm"))[0]
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"1 of 12 DICOM files listed in the metadata are missing.*{missing.name}"):
        manifest("rsna_pneumonia", root, cache)
    layouts.write_dicom(missing, np.zeros((8, 8), dtype=np.uint8))
    labels.loc[0, "Target"] = 2
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    with pytest.raises(DatasetError, match=rf"Target other than 0 or 1 \(e.g. patients {labels.loc[0, 'patientId']}"):
        manifest("rsna_pneumonia", root, cache)
    labels.loc[0, "Target"] = 0
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    missing.write_bytes(b"truncated")  # listed, present, not DICOM: named when the image cache is built
    with pytest.raises(DatasetError, match=rf"could not be decoded:\n.*{missing.name}"):
        load("rsna_pneumonia", root, cache)
