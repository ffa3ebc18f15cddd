"""The manifest: a dataset's split, written once as parquet (path, label, split, group, hash[, caption]) with a
hash of its own that goes into every run's params.

Official splits are kept; other rows are split stratified by label, seeded, and grouped by patient/lesion when
the dataset has such IDs. The same data and options always give the identical manifest; it is rebuilt only when
a file changes (the source's fingerprint). Checks made here, before any training: labels inside the class list,
every split non-empty, and no image in two splits (by content hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from trainables.data.base import SPLITS, DatasetError, Source
from trainables.data.splits import assign_splits

COLUMNS = ["path", "label", "split", "group", "hash"]
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


@dataclass
class Manifest:
    frame: pd.DataFrame  # COLUMNS (+ caption), in a canonical order: split, then path
    classes: list[str]
    hash: str
    path: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)  # what was dropped and why, for the run's params


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDPEFT_CACHE_DIR") or Path.home() / ".cache" / "medpeft-sweep")


def build_manifest(
    source: Source,
    cache_dir: str | Path | None = None,
    split_seed: int = 0,
    val_share: float = 0.1,
    test_share: float = 0.2,
    on_duplicate: Literal["error", "drop"] = "error",
    write: bool = True,
) -> Manifest:
    """The source's manifest, from the cache when nothing changed, else built, checked and written (with
    write=False, not yet: `save_manifest` writes it once every other check has passed)."""
    classes = source.classes()
    rows = source.rows()
    settings = {"split_seed": split_seed, "val": val_share, "test": test_share, "on_duplicate": on_duplicate}
    key = hashlib.sha1(json.dumps(
        {"source": source.name, "root": str(source.root), "options": source.options.model_dump(mode="json"),
         "fingerprint": source.fingerprint(rows), "settings": settings, "version": 1}, sort_keys=True,
    ).encode()).hexdigest()[:20]
    path = Path(cache_dir or default_cache_dir()) / "manifests" / f"{source.name}-{key}.parquet"
    if path.is_file():
        return read_manifest(path)

    if rows.empty:
        raise DatasetError(f"dataset {source.name!r} lists no images under {source.root}; point its root at the "
                           "data, or fix the layout")
    rows = rows.rename(columns={"item": "path"})
    rows["label"] = rows["label"].astype(np.int64)
    _check_labels(rows, classes, source.name)
    rows["hash"] = source.content_hashes(rows["path"].tolist())
    rows = assign_splits(rows, seed=split_seed, val=val_share, test=test_share)
    rows, notes = _handle_duplicates(rows, source.name, on_duplicate)
    notes.update(source.notes)
    for split in SPLITS:
        if not (rows["split"] == split).any():
            raise DatasetError(f"dataset {source.name!r}: the {split} split is empty")
    columns = COLUMNS + (["caption"] if "caption" in rows else [])
    frame = rows[columns].copy()
    frame["group"] = frame["group"].fillna("").astype(str)
    frame = frame.sort_values(["split", "path"], key=_split_then_path, kind="stable").reset_index(drop=True)
    manifest = Manifest(frame, classes, frame_hash(frame), path, notes)
    if write:
        save_manifest(manifest)
    return manifest


def save_manifest(manifest: Manifest) -> None:
    """Write a manifest built with write=False (nothing to do when that file exists)."""
    if not manifest.path.is_file():
        _write(manifest)


def check_captions(manifest: Manifest, dataset: str) -> None:
    """Image-caption pairs (text-to-image): a dataset without captions, or with images lacking one, is an error
    that says how many and which, before any image is read."""
    if "caption" not in manifest.frame:
        raise DatasetError(f"dataset {dataset!r} has no captions, and text-to-image trains on image-caption pairs: "
                           "use a dataset with captions (csv: options.caption_column names the column; mimic_cxr: "
                           "its reports)")
    captions = manifest.frame["caption"].fillna("").astype(str).str.strip()
    empty = manifest.frame.loc[captions == "", "path"]
    if len(empty):
        raise DatasetError(f"dataset {dataset!r}: {len(empty)} of {len(captions)} images have no caption (first: "
                           f"{empty.iloc[0]}); every image needs one: fill them in, or drop those images")


def check_classes(manifest: Manifest, dataset: str) -> None:
    """Classification needs two classes or more, each with training and validation images (validation chooses
    the trial; a class it lacks cannot be scored there) and test images (which the report reads). A dataset that
    does not have them is an error naming the split and the classes, before any training."""
    classes = manifest.classes
    if len(classes) < 2:
        raise DatasetError(f"dataset {dataset!r} has {len(classes)} class ({', '.join(classes) or 'none'}): "
                           "classification needs two or more (an imagefolder needs one folder per class)")
    counts = manifest.frame.groupby(["split", "label"]).size()
    for split in ("train", "val", "test"):
        absent = [c for i, c in enumerate(classes) if counts.get((split, i), 0) == 0]
        if absent:
            raise DatasetError(
                f"dataset {dataset!r}: the {split} split has no images of class(es) {', '.join(absent[:5])} "
                f"({len(absent)} of {len(classes)}); every class needs images in train, val and test. Add images, "
                "merge or drop those classes, or change the split (val_share / test_share)")


def frame_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha1(frame.to_csv(index=False).encode()).hexdigest()[:16]


def _split_then_path(column: pd.Series) -> pd.Series:
    return column.map(SPLIT_ORDER) if column.name == "split" else column


def _check_labels(rows: pd.DataFrame, classes: list[str], name: str) -> None:
    labels = rows["label"].to_numpy()
    bad = (labels < 0) | (labels >= len(classes))
    if bad.any():
        raise DatasetError(
            f"dataset {name!r}: {int(bad.sum())} labels outside its {len(classes)} classes "
            f"(values {sorted(set(labels[bad].tolist()))[:5]}, e.g. {rows['path'][bad].head(3).tolist()})"
        )


def _handle_duplicates(rows: pd.DataFrame, name: str, policy: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The same image content in two splits leaks the test set into training. Error by default; `drop` keeps
    the copy in the latest split (test, then val) and drops the others."""
    splits_per_hash = rows.groupby("hash")["split"].nunique()
    leaking = rows[rows["hash"].isin(splits_per_hash[splits_per_hash > 1].index)]
    if leaking.empty:
        return rows, {}
    if policy == "error":
        examples = [
            " = ".join(f"{r.path} ({r.split})" for r in group.itertuples())
            for _, group in list(leaking.groupby("hash"))[:3]
        ]
        raise DatasetError(
            f"dataset {name!r}: {leaking['hash'].nunique()} images appear in more than one split (identical "
            f"content), e.g. {'; '.join(examples)}. Remove the copies, or set the dataset's on_duplicate: drop "
            "to keep each image only in its latest split (test, then val)"
        )
    rank = rows["split"].map(SPLIT_ORDER)
    keep_rank = rank.groupby(rows["hash"]).transform("max")
    dropped = rows[rank < keep_rank]
    return rows[rank == keep_rank], {"dropped_duplicates": str(len(dropped))}


def _write(manifest: Manifest) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = manifest.path
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"classes": json.dumps(manifest.classes), "hash": manifest.hash, "notes": json.dumps(manifest.notes)}
    table = pa.Table.from_pandas(manifest.frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k: v.encode() for k, v in metadata.items()}})
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        pq.write_table(table, tmp.name)
    os.replace(tmp.name, path)  # whole or not at all, also when several trials build it at once


def read_manifest(path: Path) -> Manifest:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return Manifest(table.to_pandas(), json.loads(meta["classes"]), meta["hash"], path,
                    json.loads(meta.get("notes", "{}")))
