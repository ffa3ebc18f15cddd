"""Datasets: each publisher's layout behind one `Source` interface; importing this package registers them."""

from trainables.data import (  # noqa: F401  (registration)
    busi,
    fitzpatrick17k,
    folders,
    ham10000,
    medmnist,
    mimic_cxr,
    retinopathy,
    rsna_pneumonia,
    smdg,
    smear,
    synthetic,
)
from trainables.data.base import DatasetError, Located, Source, get_source, list_datasets, register_dataset
from trainables.data.cache import ImageCache, image_cache
from trainables.data.loader import Batches
from trainables.data.manifest import (
    Manifest,
    build_manifest,
    check_captions,
    check_classes,
    default_cache_dir,
)
from trainables.data.prepare import (
    ImageSplit,
    SplitData,
    load_splits,
    open_source,
    prepare_cache,
    prepare_manifest,
)

__all__ = [
    "Batches",
    "DatasetError",
    "ImageCache",
    "ImageSplit",
    "Located",
    "Manifest",
    "Source",
    "SplitData",
    "build_manifest",
    "check_captions",
    "check_classes",
    "default_cache_dir",
    "get_source",
    "image_cache",
    "list_datasets",
    "load_splits",
    "open_source",
    "prepare_cache",
    "prepare_manifest",
    "register_dataset",
]
