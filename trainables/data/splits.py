"""Splits and data fractions: stratified, seeded, grouped by patient/lesion, and nested across fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainables.data.base import DatasetError


def assign_splits(manifest: pd.DataFrame, seed: int, val: float = 0.1, test: float = 0.2) -> pd.DataFrame:
    """Fill empty `split` cells: stratified by label and, where rows carry a `group`, no group in two splits.

    Groups are assigned whole: each group counts toward the class of its first image, and groups of a class
    are shuffled with the seed, then cut at the requested shares.
    """
    manifest = manifest.copy()
    todo = manifest["split"] == ""
    if not todo.any():
        return manifest
    rows = manifest[todo]
    group = rows["group"].where(rows["group"] != "", "row:" + rows.index.astype(str))
    groups = pd.DataFrame({"group": group, "label": rows["label"]}).groupby("group", sort=True)["label"].first()
    rng = np.random.default_rng(seed)
    assigned: dict[str, str] = {}
    for label in sorted(groups.unique()):
        members = groups.index[groups == label].to_numpy()
        members = members[rng.permutation(len(members))]
        n_test = round(len(members) * test)
        n_val = round(len(members) * val)
        for i, g in enumerate(members):
            assigned[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    manifest.loc[todo, "split"] = group.map(assigned).to_numpy()
    return manifest


def fraction_ranks(labels: np.ndarray, seed: int) -> np.ndarray:
    """Each training image's position in a seeded per-class order. A fraction f keeps, in every class, the images
    ranked below round(f * class size), so smaller fractions are always inside larger ones."""
    ranks = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(len(idx))
        ranks[idx[order]] = np.arange(len(idx))
    return ranks


def fraction_mask(labels: np.ndarray, fraction: float, seed: int, classes: list[str]) -> np.ndarray:
    """Boolean mask of the training images kept at `fraction` (nested, stratified); error if a class empties."""
    ranks = fraction_ranks(labels, seed)
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        in_class = labels == label
        n_keep = round(fraction * int(in_class.sum()))
        if n_keep == 0:
            n = int(in_class.sum())
            raise DatasetError(
                f"data fraction {fraction:g} leaves class {classes[int(label)]!r} without training images (it has "
                f"{n}, and {fraction:g} x {n} rounds to 0); use fractions of at least {1 / n:.2g}"
            )
        keep |= in_class & (ranks < n_keep)
    return keep
