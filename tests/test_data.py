from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BREASTMNIST, needs_shared_data
from trainables.config import DataConfig
from trainables.data import Batches, DatasetError, get_source, load_splits
from trainables.data.splits import assign_splits, fraction_mask


@needs_shared_data
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_medmnist_labels_flat_or_column(tmp_path, label_shape):
    with np.load(BREASTMNIST) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if label_shape == "column":
        arrays = {k: (v.reshape(-1, 1) if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    config = DataConfig(name="medmnist", root=str(tmp_path), options={"subset": "breastmnist", "download": False},
                        image_size=32, on_duplicate="drop", cache_dir=str(tmp_path / "cache"))
    data = load_splits(config, 0)
    # The official split (546/78/156) has one image in both train and test; it stays in test only.
    assert (len(data.train), len(data.val), len(data.test)) == (545, 78, 156)
    assert data.params["data.dropped_duplicates"] == "1"
    assert data.classes == ["malignant", "normal, benign"]
    assert data.train.images.shape == (545 + 78 + 156, 1, 32, 32)
    assert sorted(data.train.labels.bincount().tolist()) in ([146, 399], [147, 398])


def test_missing_medmnist_names_the_files_and_the_fix(tmp_path):
    source = get_source("medmnist", str(tmp_path), {"subset": "dermamnist", "download": False})  # not shipped
    with pytest.raises(DatasetError, match="--data-root"):
        source.locate()


def test_breastmnist_ships_with_the_project_and_is_found_without_a_data_root(tmp_path, monkeypatch):
    """The default sweep's data is real and inside the project: found with no data root, no download, and an empty
    home directory (nothing cached there)."""
    import hashlib

    from trainables.data import medmnist

    monkeypatch.setattr(medmnist, "DOWNLOAD_DIR", tmp_path / "empty-home" / ".medmnist")
    source = get_source("medmnist", None, {"subset": "breastmnist", "download": False})
    located = source.locate()
    assert located.root == str(medmnist.SHIPPED_DIR)
    path = medmnist.SHIPPED_DIR / "breastmnist_28.npz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == "098de56cd2d92ef2f7170e6153c02849"
    assert "CC BY 4.0" in (medmnist.SHIPPED_DIR / "README.md").read_text()
    with np.load(path) as npz:
        assert npz["train_images"].shape == (546, 28, 28) and npz["test_labels"].reshape(-1).sum() == 114


def test_unknown_dataset_and_bad_options():
    with pytest.raises(DatasetError, match="unknown dataset"):
        get_source("nope", None, {})
    with pytest.raises(DatasetError, match="bad options"):
        get_source("medmnist", None, {"subset": "breastmnist", "size": 33})


def test_fractions_are_nested_stratified_and_seeded():
    labels = np.array([0] * 100 + [1] * 300 + [2] * 40)
    classes = ["a", "b", "c"]
    masks = {f: fraction_mask(labels, f, seed=3, classes=classes) for f in (0.1, 0.25, 0.5, 1.0)}
    for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert not (masks[small] & ~masks[large]).any(), f"{small} is not inside {large}"
    assert np.bincount(labels[masks[0.25]]).tolist() == [25, 75, 10]
    assert (fraction_mask(labels, 0.25, seed=3, classes=classes) == masks[0.25]).all()
    assert not (fraction_mask(labels, 0.25, seed=4, classes=classes) == masks[0.25]).all()


def test_a_fraction_that_empties_a_class_names_it():
    labels = np.array([0] * 100 + [1] * 3)
    with pytest.raises(DatasetError, match="'rare'"):
        fraction_mask(labels, 0.1, seed=0, classes=["common", "rare"])


def test_splits_are_grouped_and_stratified():
    import pandas as pd

    rows = [{"path": f"img{i}", "label": i % 2, "split": "", "group": f"patient{i // 3}"} for i in range(600)]
    manifest = assign_splits(pd.DataFrame(rows), seed=0)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest.groupby("group")["split"].nunique() == 1).all()
    shares = manifest["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.05 and abs(shares["val"] - 0.1) < 0.05
    assert assign_splits(pd.DataFrame(rows), seed=0).equals(manifest)


def test_synthetic_dataset_is_balanced_and_deterministic(tmp_path):
    a = load_splits(DataConfig(name="synthetic", options={"num_classes": 3}, image_size=16,
                               cache_dir=str(tmp_path / "a")), seed=0)
    b = load_splits(DataConfig(name="synthetic", options={"num_classes": 3}, image_size=16,
                               cache_dir=str(tmp_path / "b")), seed=0)
    assert a.train.labels.bincount().tolist() == [200, 200, 200]
    assert (a.train.images == b.train.images).all() and a.params["data.manifest_hash"] == b.params["data.manifest_hash"]


def test_batches_shard_pad_and_augment_deterministically():
    data = load_splits(DataConfig(name="synthetic", image_size=16), seed=0)
    full = Batches(data.val, 16, (0.5,) * 3, (0.5,) * 3, shuffle=True, seed=1)
    shards = [Batches(data.val, 16, (0.5,) * 3, (0.5,) * 3, shuffle=True, seed=1, rank=r, world_size=3)
              for r in range(3)]
    assert sum(len(s.indices()) for s in shards) >= len(data.val)
    assert len({len(s.indices()) for s in shards}) == 1  # padded: every rank runs the same number of steps
    assert set(np.concatenate([s.indices().numpy() for s in shards])) == set(full.indices().numpy())
    aug = Batches(data.train, 8, (0.5,) * 3, (0.5,) * 3, shuffle=True, augment=True, seed=2)
    aug.epoch = 3
    first = next(iter(aug))[0]
    again = next(iter(aug))[0]
    assert first.shape == (8, 3, 16, 16) and np.allclose(first.numpy(), again.numpy())


def test_max_train_images_is_one_fixed_stratified_pool_the_fractions_come_from(tmp_path):
    def splits(seed: int, fraction: float, cap: int | None):
        return load_splits(DataConfig(name="synthetic", options={"num_classes": 3}, image_size=16, fraction=fraction,
                                      max_train_images=cap, cache_dir=str(tmp_path)), seed=seed)

    whole = splits(0, 1.0, None)
    capped = [splits(seed, 1.0, 150) for seed in (0, 1)]
    # 600 balanced images capped at 150: 50 per class, the same pool whatever the cell's seed.
    assert capped[0].train.labels.bincount().tolist() == [50, 50, 50]
    assert (capped[0].train.rows == capped[1].train.rows).all()
    assert set(capped[0].train.rows) < set(whole.train.rows)
    # Fractions are of the pool: 0.2 of 150 = 10 per class, inside the pool; validation and test stay whole.
    tenth = splits(1, 0.2, 150)
    assert tenth.train.labels.bincount().tolist() == [10, 10, 10]
    assert set(tenth.train.rows) < set(capped[0].train.rows)
    assert len(tenth.val) == len(whole.val) and len(tenth.test) == len(whole.test)
    assert tenth.params["data.max_train_images"] == "150"
