"""Checkpoint IO, in one place: per-trial checkpoints at a place derived from the trial key, on the sweep's storage
(a path or an S3 URI), what a checkpoint of a training loop holds (`save_training_state`, `load_training_state`)
and the epoch's report saved beside it (`write_report`, `read_reports`).

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
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

LATEST = "LATEST"
EPOCH_REPORT = "report.json"  # in every checkpoint: the report of the epoch it holds
FINAL_REPORT = "final_report.json"  # in the last epoch's checkpoint: that epoch's report
P = TypeVar("P")


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


def save_training_state(directory: Path, model, bn_mode: str | None, optimizer, schedule, progress,
                        best_state: dict | None) -> None:
    """A checkpoint: only what was trained (safetensors), the best-validation copy of it, the optimizer and
    schedule state, and the loop's progress counters (a dataclass)."""
    import torch
    from safetensors.torch import save_file

    from trainables.methods import trainable_state_dict

    save_file({k: v.contiguous() for k, v in trainable_state_dict(model, bn_mode).items()},
              str(directory / "trained.safetensors"))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(directory / "best.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, directory / "optimizer.pt")
    (directory / "progress.json").write_text(json.dumps(asdict(progress)))


def load_training_state(directory: Path, model, optimizer, schedule, progress_type: type[P]) -> tuple[P, dict | None]:
    """The trained weights first (diffusers' training scripts long restored only the optimizer, so a resumed run
    went on from the pretrained weights), then the optimizer, schedule, progress and best-validation copy."""
    import torch
    from safetensors.torch import load_file

    from trainables.methods import load_trainable_state

    load_trainable_state(model, load_file(str(directory / "trained.safetensors")))
    state = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    best = directory / "best.safetensors"
    progress = progress_type(**json.loads((directory / "progress.json").read_text()))
    return progress, load_file(str(best)) if best.exists() else None


def write_report(directory: Path, report: dict[str, Any], final: bool) -> None:
    """Beside a checkpoint's state: the report of the epoch it holds, and in the last epoch's checkpoint the same
    report as the final one (trainables.trial reads them back with `read_reports`)."""
    text = json.dumps(report, default=float)
    (directory / EPOCH_REPORT).write_text(text)
    if final:
        (directory / FINAL_REPORT).write_text(text)


def read_reports(checkpoint: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A checkpoint's (epoch report, final report), each None where the checkpoint has none (the final report only
    in the last epoch's; neither in one written before reports were kept)."""
    def read(name: str) -> dict[str, Any] | None:
        return json.loads((checkpoint / name).read_text()) if (checkpoint / name).exists() else None

    return read(EPOCH_REPORT), read(FINAL_REPORT)
