"""Every dataset of a plan made ready before any trial starts, through trainables.data's one preparation pipeline:
its manifest and image cache built and checked here (so bad data stops the sweep before anything runs, and trials
on this machine find the cache ready), and with remote storage uploaded to its cache/ folder for other nodes."""

from __future__ import annotations

from sweep.plan.grid import data_config
from sweep.plan.spec import SpecError
from sweep.plan.validate import Plan


def prepare_data(plan: Plan, storage=None, log=print) -> dict[str, dict]:
    """Build every dataset's manifest and image cache here, before any trial starts: corrupt images, labels
    outside the class list, images in two splits, a class missing from a split and a data fraction that leaves a
    class without training images stop the sweep now, and trials on this machine find the cache ready. A dataset
    refused leaves no file behind: its manifest is written last, and an image cache with undecodable images only
    when the dataset skips them. With remote storage both files are uploaded to its cache/ folder, from which
    other nodes fetch them instead of reading the raw dataset. Returns, per dataset key, what trials are told
    (`data.prepared`)."""
    import time

    from trainables.config import DataConfig
    from trainables.data import DatasetError, check_captions, check_classes
    from trainables.data.prepare import prepare_dataset
    from trainables.tasks import get_task

    task = get_task(plan.spec.task)
    prepared: dict[str, dict] = {}
    for cell in plan.cells:
        if cell.dataset.key in prepared:
            continue
        cfg = DataConfig.model_validate(data_config(cell.dataset, plan.spec.image_size))
        started = time.monotonic()

        def check(manifest, key=cell.dataset.key) -> None:
            if task.needs_captions:
                check_captions(manifest, key)
            if task.needs_classes:
                check_classes(manifest, key)

        try:
            dataset = prepare_dataset(cfg, check=check, fractions=plan.spec.fractions, label=cell.dataset.key)
        except DatasetError as e:
            raise SpecError(str(e)) from None
        source, manifest, cache = dataset.source, dataset.manifest, dataset.cache
        counts = manifest.frame["split"].value_counts()
        notes = "".join(f", {k.replace('_', ' ')}: {v}" for k, v in manifest.notes.items())
        skipped = f", {len(cache.errors)} unreadable images skipped" if cache.errors else ""
        remote = None
        if storage is not None and storage.remote:
            remote = storage.join("cache")
            for kind, path in (("manifests", manifest.path), ("images", cache.path)):
                if not storage.exists(f"{remote}/{kind}/{path.name}"):
                    storage.upload(path, f"{remote}/{kind}/{path.name}")
        prepared[cell.dataset.key] = {"manifest": manifest.path.name, "images": cache.path.name,
                                      "source": source.describe(), "remote": remote}
        log(f"Data {cell.dataset.key}: {counts.get('train', 0)} train / {counts.get('val', 0)} val / "
            f"{counts.get('test', 0)} test images, manifest {manifest.hash}{notes}{skipped}, "
            f"{plan.spec.image_size}px cache ready ({time.monotonic() - started:.1f}s)")
    return prepared
