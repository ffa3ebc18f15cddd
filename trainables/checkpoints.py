"""Per-trial checkpoints at a place derived from the trial key, on the sweep's storage (a path or an S3 URI).

Why not Tune's checkpoints: Tune's experiment snapshot names a trial's checkpoint directory, and with a bounded
number of kept checkpoints that directory may be gone by the time a killed driver restores the snapshot
("Could not recover from checkpoint as it does not exist on storage anymore"). A store keyed by trial key is also
found by a trial that the searcher suggests again after a restore (same cell, same index, same config), so no
finished epoch is trained twice.

Layout: `<root>/<trial>/epoch_000007/...` plus `<root>/<trial>/LATEST` naming the complete one. LATEST is written
last, in one put, so a crash mid-save leaves the previous checkpoint in force. Older epochs are then removed
(best effort: storage failing there does not fail a complete checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

LATEST = "LATEST"


def safe_dirname(trial_key: str) -> str:
    """A trial key as one folder name: its checkpoint folder, and the start of its Tune trial folder."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", trial_key)


class CheckpointStore:
    def __init__(self, root: str, trial_key: str, digest: str) -> None:
        self.fs, base = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
        self.dir = f"{base.rstrip('/')}/{safe_dirname(trial_key)}"
        self.digest = digest  # a checkpoint of another config under the same key is not ours to resume

    def save(self, local_dir: Path, epoch: int) -> None:
        name = f"epoch_{epoch:06d}"
        (local_dir / "config_hash").write_text(self.digest)
        self.fs.create_dir(f"{self.dir}/{name}", recursive=True)
        for file in sorted(local_dir.iterdir()):
            with file.open("rb") as src, self.fs.open_output_stream(f"{self.dir}/{name}/{file.name}") as dst:
                shutil.copyfileobj(src, dst, length=8 * 2**20)
        with self.fs.open_output_stream(f"{self.dir}/{LATEST}") as f:
            f.write(json.dumps({"epoch": epoch, "dir": name}).encode())
        # The checkpoint is complete; older ones go now, or with the next save if storage fails us here.
        with contextlib.suppress(OSError):
            for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
                if info.type == pafs.FileType.Directory and info.base_name != name:
                    self.fs.delete_dir(info.path)

    def latest_epoch(self) -> int:
        pointer = self._pointer()
        return int(pointer["epoch"]) if pointer else 0

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        """A local copy of the newest complete checkpoint of this config, or None."""
        pointer = self._pointer()
        if pointer is None:
            yield None
            return
        source = f"{self.dir}/{pointer['dir']}"
        with tempfile.TemporaryDirectory(prefix="medpeft-restore-") as tmp:
            for info in self.fs.get_file_info(pafs.FileSelector(source)):
                with self.fs.open_input_stream(info.path) as src, open(Path(tmp) / info.base_name, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=8 * 2**20)
            if (Path(tmp) / "config_hash").read_text() != self.digest:
                yield None
                return
            yield Path(tmp)

    def _pointer(self) -> dict | None:
        """What LATEST names, or None when there is none. Other OSErrors (storage unreachable) propagate: read as
        "no checkpoint", they would have the trial trained again from scratch and its MLflow run replaced."""
        try:
            with self.fs.open_input_stream(f"{self.dir}/{LATEST}") as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
