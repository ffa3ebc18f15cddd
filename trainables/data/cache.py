"""Decoded, resized images cached once per machine as an Arrow IPC file, memory-mapped by every trial.

Keyed by the manifest hash and the preprocessing (size, channels, resize method), so any change to the data or
the split gives a new file and an unchanged one is never decoded twice. One column of fixed-size binary images
(C x S x S uint8, manifest order) in a single record batch: reading is a zero-copy view of the mapped file.
Several trials starting at once build it once: the first takes a file lock and builds into a temporary file that
is renamed into place; the others wait for the lock and then map the finished file.

Images that cannot be decoded are recorded in the file's metadata (row and reason) instead of failing the build:
whether they are an error or skipped is the dataset's `on_corrupt` choice, made when the cache is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np

from trainables.data.base import DatasetError, Source, square_resize
from trainables.data.manifest import Manifest, default_cache_dir

PREPROCESSING = "centre-square-crop+bilinear-resize/v1"
PARALLEL_FROM = 1024  # images; below this, decoding in one process is faster than starting workers
CHUNK = 256


@dataclass
class ImageCache:
    images: np.ndarray  # uint8 (N, C, S, S), a view of the memory-mapped file, manifest order
    errors: dict[int, str]  # manifest row -> why it could not be decoded
    path: Path
    key: str


def cache_key(manifest: Manifest, size: int, channels: int) -> str:
    return hashlib.sha1(f"{manifest.hash}/{size}/{channels}/{PREPROCESSING}".encode()).hexdigest()[:20]


def cache_path(manifest: Manifest, size: int, channels: int, cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "images" / f"{cache_key(manifest, size, channels)}.arrow"


def image_cache(manifest: Manifest, source: Source, size: int, cache_dir: str | Path | None = None,
                workers: int | None = None, on_corrupt: Literal["error", "skip"] = "skip") -> ImageCache:
    """The cache for this manifest and size, built if missing. With on_corrupt="error", images that cannot be
    decoded are a DatasetError and no cache is written (with "skip", they are recorded in it)."""
    path = cache_path(manifest, size, source.channels, cache_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_suffix(".lock")
        try:
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not path.is_file():  # nobody built it while we waited
                    _build(path, manifest, source, size, workers, on_corrupt)
        except DatasetError:
            # A refused build leaves nothing. Whoever waited on this lock builds on (and refuses) by itself.
            lock_path.unlink(missing_ok=True)
            raise
    return open_cache(path)


def corrupt_images(errors: dict[int, str], name: str) -> DatasetError:
    """The error for images that could not be decoded: how many, which and why, and the two ways on."""
    listed = "\n".join(f"    {why}" for why in list(errors.values())[:10])
    more = f"\n    ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    return DatasetError(
        f"dataset {name!r}: {len(errors)} images could not be decoded:\n{listed}{more}\n"
        "Replace or remove them, or set the dataset's on_corrupt: skip to train without them (the count is "
        "recorded in every run's params)"
    )


def open_cache(path: Path) -> ImageCache:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    shape = tuple(json.loads(meta["shape"]))
    column = table.column("image").chunk(0)
    images = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=int(np.prod(shape))).reshape(shape)
    errors = {int(k): v for k, v in json.loads(meta.get("errors", "{}")).items()}
    return ImageCache(images, errors, path, path.stem)


def _build(path: Path, manifest: Manifest, source: Source, size: int, workers: int | None, on_corrupt: str) -> None:
    import pyarrow as pa

    n, c = len(manifest.frame), source.channels
    items = manifest.frame["path"].tolist()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        images = np.lib.format.open_memmap(Path(tmp) / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, size, size))
        errors: dict[int, str] = {}
        chunks = [(start, items[start : start + CHUNK]) for start in range(0, n, CHUNK)]
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        if n >= PARALLEL_FROM and workers > 1 and source.parallel_decode:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results = pool.map(_decode_chunk, [(source, chunk, size) for _, chunk in chunks])
                for (start, _), (block, failed) in zip(chunks, results, strict=True):
                    images[start : start + len(block)] = block
                    errors.update({start + i: why for i, why in failed.items()})
        else:
            for start, chunk in chunks:
                block, failed = _decode_chunk((source, chunk, size))
                images[start : start + len(block)] = block
                errors.update({start + i: why for i, why in failed.items()})
        if errors and on_corrupt == "error":
            raise corrupt_images(errors, source.name)
        images.flush()
        array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(c * size * size), n, [None, pa.py_buffer(images)])
        metadata = {"shape": json.dumps([n, c, size, size]), "errors": json.dumps(errors),
                    "manifest": manifest.hash, "preprocessing": PREPROCESSING}
        schema = pa.schema([("image", array.type)], metadata=metadata)
        partial = Path(tmp) / "cache.arrow"
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(pa.record_batch([array], schema=schema))
        os.replace(partial, path)


def _decode_chunk(task: tuple[Source, list[str], int]) -> tuple[np.ndarray, dict[int, str]]:
    """Decode, centre-crop and resize a chunk of images; a failure is recorded, not raised."""

    source, items, size = task
    block = np.zeros((len(items), source.channels, size, size), dtype=np.uint8)
    failed: dict[int, str] = {}
    for i, item in enumerate(items):
        try:
            (image,) = source.read([item], size)
            image = square_resize(image, size)
            block[i] = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        except Exception as e:  # corrupt, truncated, unreadable: the dataset's on_corrupt decides
            failed[i] = f"{item}: {type(e).__name__}: {e}"[:300]
    return block, failed
