"""What the trainable costs beyond training.

trainable_overhead_ratio: training images/s of our trainable inside a real one-trial sweep (cache-backed data,
augmentation, the PEFT method, per-epoch validation, MLflow logging, checkpointing, Tune reporting), measured
from MLflow's epoch timestamps over epochs 2..E, divided by the images/s of a minimal hand-written PyTorch loop
on the same model, data, augmentation, batch size and thread count (with the same per-epoch validation).

nesting_overhead_s: seconds from a trial's start to its first report, TorchTrainer-inside-Tune minus the inline
function trainable (the path single-worker trials take), same trial, same run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import Result, data_args, launch, tune_results
from trainables.contract import split_size_param


def minimal_loop(method: str, epochs: int, image_size: int, seconds: list[float]) -> int:
    """The baseline: build, then train with a plain loop; appends the wall time of each epoch."""
    from trainables.backbones import build_backbone
    from trainables.config import DataConfig
    from trainables.data import load_splits
    from trainables.data.loader import random_resized_crop_flip
    from trainables.methods import prepare_model, train_mode

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_splits(DataConfig(name="medmnist", root=data_args()[1] if data_args() else None,
                                  options={"subset": "breastmnist"}, image_size=image_size, on_duplicate="drop"), 0)
    model, info = build_backbone("tf_efficientnet_lite0", 2, "default", image_size)
    prepared = prepare_model(model, info, method)
    model = prepared.model
    x_train = data.train.images[data.train.rows].astype(np.float32)
    x_train = torch.from_numpy(x_train).expand(-1, 3, -1, -1) if x_train.shape[1] == 1 else torch.from_numpy(x_train)
    x_val = torch.from_numpy(data.val.images[data.val.rows].astype(np.float32)).expand(-1, 3, -1, -1)
    y_train, mean, std = data.train.labels, 127.5, 127.5
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        started = time.perf_counter()
        train_mode(model, prepared.bn_mode)  # the method's BatchNorm choice is part of the recipe, not overhead
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            x = random_resized_crop_flip(x_train[idx], generator)
            loss = F.cross_entropy(model((x - mean) / std), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model((x_val - mean) / std).argmax(1)
        seconds.append(time.perf_counter() - started)
    return len(y_train)


def sweep_epoch_seconds(storage: Path, name: str) -> tuple[list[float], int]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "epoch"))
    return list(np.diff(stamps) / 1000), int(run.data.params[split_size_param("train")])


def run(quick: bool = False) -> list[Result]:
    results = []
    epochs, size = (4, 64) if quick else (8, 64)
    for method in ("linear", "lora_conv"):
        with tempfile.TemporaryDirectory() as tmp:
            launch("--storage", tmp, "--name", "overhead", *data_args(), "--set", f"methods=[{method}]",
                   "--set", "fractions=[1.0]", "--set", f"train.epochs={epochs}", "--set", "search.trials_per_cell=1",
                   "--set", f"image_size={size}", "--set", "scheduler.type=fifo")
            ours, n = sweep_epoch_seconds(Path(tmp), "overhead")
        baseline: list[float] = []
        minimal_loop(method, epochs, size, baseline)
        ours_rate, base_rate = n / np.mean(ours), n / np.mean(baseline[1:])
        results.append(Result(
            key="trainable_overhead_ratio" if method == "linear" else "trainable_overhead_ratio_lora_conv",
            value=ours_rate / base_rate, target=">= 0.97",
            ours=f"{ours_rate:,.0f} images/s, our trainable in a sweep ({method}, EfficientNet-Lite0, {size}px, "
                 f"epochs 2-{epochs})",
            baseline=f"{base_rate:,.0f} images/s, a minimal PyTorch loop (same model, data, augmentation, threads)",
        ))

    # Nesting: the same one-trial sweep, inline and through a TorchTrainer built inside the Tune trial.
    first, per_epoch = {}, {}
    for mode, env in (("inline", {}), ("nested", {"MEDPEFT_FORCE_NESTED": "1"})):
        with tempfile.TemporaryDirectory() as tmp:
            launch("--storage", tmp, "--name", "nesting", *data_args(), "--set", "methods=[linear]",
                   "--set", "fractions=[0.25]", "--set", "train.epochs=3", "--set", "search.trials_per_cell=1",
                   "--set", "scheduler.type=fifo", env={"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0", **env})
            (rows,) = tune_results(Path(tmp) / "nesting").values()
            first[mode] = rows[0]["time_total_s"]
            per_epoch[mode] = float(np.mean([r["time_this_iter_s"] for r in rows[1:]]))
    overhead = first["nested"] - first["inline"]
    trial = first["inline"] + 2 * per_epoch["inline"]
    results.append(Result(
        key="nesting_overhead_s", value=overhead, target="0 on the default path",
        ours=f"nested TorchTrainer: {first['nested']:.1f}s to the first report, {per_epoch['nested']:.2f}s/epoch",
        baseline=f"inline function trainable: {first['inline']:.1f}s to the first report, "
                 f"{per_epoch['inline']:.2f}s/epoch; nesting would add {overhead / trial:.0%} to this "
                 "quickstart-size trial, so one-worker trials run inline (0 s)",
        details={"first_report_s": first, "epoch_s": per_epoch},
    ))
    return results
