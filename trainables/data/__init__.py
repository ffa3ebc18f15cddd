"""Datasets: each publisher's layout behind one `Source` interface; importing this package registers them."""

from trainables.data import medmnist, synthetic  # noqa: F401  (registration)
from trainables.data.base import DatasetError, Located, Source, get_source, list_datasets, register_dataset
from trainables.data.loader import Batches
from trainables.data.prepare import ImageSplit, SplitData, load_splits, open_source

__all__ = [
    "Batches",
    "DatasetError",
    "ImageSplit",
    "Located",
    "Source",
    "SplitData",
    "get_source",
    "list_datasets",
    "load_splits",
    "open_source",
    "register_dataset",
]
