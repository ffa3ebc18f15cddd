"""Data benchmarks: the image cache against decoding the files, and the loader against the model's appetite.

cache_speedup: images/s served from the memory-mapped Arrow cache (random batches, as training reads them)
divided by images/s decoding the same JPEG/PNG files to the same size (PIL decode + centre crop + resize), one
process each, same run. loader_to_training: images/s our loader delivers (gather + per-sample augmentation +
normalisation) divided by images/s the quickstart backbone trains, so a value far above 1 means data is never
the bottleneck.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import SHARED_DATA, Result, rate


def sample_images(folder: Path, quick: bool) -> tuple[Path, int]:
    """A folder of real JPEG/PNG images (HAM10000 and BUSI samples), or generated ones when absent."""
    files = sorted((SHARED_DATA / "ham10000_200x150").rglob("*.jpg"))[: 300 if quick else 1000]
    files += sorted((SHARED_DATA / "busi_256").rglob("*.png"))[: 100 if quick else 399]
    if not files:
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(300):
            Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(folder / "gen" / f"{i}.jpg")
        files = sorted((folder / "gen").glob("*.jpg"))
    for i, f in enumerate(files):  # two pseudo-classes, so the dataset can be split like any other
        (folder / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / "images" / f"c{i % 2}" / f"{i:05d}{f.suffix}")
    return folder / "images", len(files)


def run(quick: bool = False) -> list[Result]:
    from trainables.config import DataConfig
    from trainables.data import Batches, load_splits
    from trainables.data.base import decode_file, square_resize

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root, n = sample_images(Path(tmp), quick)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for size in (64, 224):
            def decode(files=files, size=size) -> int:
                for path in files[:64]:
                    square_resize(decode_file(path, 3, size), size)
                return 64

            cfg = DataConfig(name="imagefolder", root=str(root), image_size=size, cache_dir=str(Path(tmp) / "c"))
            data = load_splits(cfg, seed=0)
            rng = np.random.default_rng(0)

            def from_cache(split=data.train, rng=rng) -> int:
                split.batch(rng.choice(len(split), 64, replace=False))
                return 64

            decoded, cached = rate(decode), rate(from_cache)
            results.append(Result(
                key="cache_speedup" if size == 224 else "cache_speedup_64px",
                value=cached / decoded, target=">= 5",
                ours=f"{cached:,.0f} images/s from the Arrow cache at {size}px",
                baseline=f"{decoded:,.0f} images/s decoding {n} JPEG/PNG files to {size}px",
            ))

        # The loader against the quickstart model (EfficientNet-Lite0, full fine-tuning, 64 px, batch 32).
        import timm

        data = load_splits(DataConfig(name="imagefolder", root=str(root), image_size=64,
                                      cache_dir=str(Path(tmp) / "c")), seed=0)
        loader = Batches(data.train, 32, (0.5,) * 3, (0.5,) * 3, shuffle=True, augment=True)

        def load_epoch() -> int:
            return sum(len(y) for _, y in loader)

        model = timm.create_model("tf_efficientnet_lite0", num_classes=2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = next(iter(loader))
        y = y % 2

        def train_step() -> int:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            return len(y)

        loading, training = rate(load_epoch), rate(train_step, min_seconds=2.0)
        results.append(Result(
            key="loader_to_training", value=loading / training, target=">> 1",
            ours=f"{loading:,.0f} images/s from our loader (gather + augment + normalise, 64px)",
            baseline=f"{training:,.0f} images/s training EfficientNet-Lite0 (full fine-tuning, 64px, 1 thread)",
        ))
    return results
