"""How fast one (backbone, method, image size, batch size) trains on this machine, and how much memory it takes:
a few warm-up and timed training steps and one evaluation pass on synthetic inputs of the right shape, with the
backbone built from its config (random weights: speed and memory do not depend on the values).

It also times what every trial of the group pays besides its steps: building the model (a trial's start-up, and
again at every restore after a pause) and writing and reading its checkpoint (every epoch; at every restore).
On the CPU the steps run with the trial's own threads (`threads`: its CPUs), as a trial sets them.

`python -m sweep.calibrate` (sweep/plan/cost.py) turns these measurements into a sweep's device-hours and cost
and into GPU shares per trial.
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainables.devices import peak_memory_mb
from trainables.methods import param_groups, prepare_model, train_mode, trainable_state_dict

TEXT_TOKENS = 77  # caption length the U-Net attends to (CLIP's)


def device_name(device: torch.device) -> str:
    """What calibrations are cached per: the GPU's name, or the CPU's model and the threads used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def _classifier(backbone: str, weights: str, kwargs: dict[str, Any], method: str, knobs: dict, bn_mode: str | None,
                image_size: int, device: torch.device):
    from trainables.backbones import build_backbone

    model, info = build_backbone(backbone, 2, "random", image_size, **kwargs)
    prepared = prepare_model(model, info, method, knobs, bn_mode)
    model = prepared.model.to(device)

    def batch(n: int):
        return (torch.randn(n, 3, image_size, image_size, device=device), torch.randint(0, 2, (n,), device=device))

    def loss(inputs) -> torch.Tensor:
        x, y = inputs
        return F.cross_entropy(model(x), y)

    return model, prepared, batch, loss


def _unet(backbone: str, weights: str, kwargs: dict[str, Any], method: str, knobs: dict, bn_mode: str | None,
          image_size: int, device: torch.device):
    from trainables.diffusion_models import build_unet

    unet, info = build_unet(backbone, weights, kwargs, config_only=True)
    prepared = prepare_model(unet, info, method, knobs, bn_mode)
    unet = prepared.model.to(device)
    factor = 4 if backbone == "tiny-sd" else 8  # the VAE's downsampling
    side, width = max(1, image_size // factor), int(unet.config.cross_attention_dim)

    def batch(n: int):
        return (torch.randn(n, unet.config.in_channels, side, side, device=device),
                torch.randint(0, 1000, (n,), device=device), torch.randn(n, TEXT_TOKENS, width, device=device))

    def loss(inputs) -> torch.Tensor:
        latents, t, context = inputs
        return F.mse_loss(unet(latents, t, encoder_hidden_states=context).sample, latents)

    return unet, prepared, batch, loss


def measure(task: str, backbone: str, weights: str, kwargs: dict[str, Any], method: str, knobs: dict,
            bn_mode: str | None, image_size: int, batch_size: int, steps: int = 5, warmup: int = 2,
            device: str | torch.device | None = None, amp: bool = True, threads: int | None = None,
            ready: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Train images/s (`warmup` steps, then `steps` timed), eval images/s (`steps` batches), peak device memory of
    the training steps, the size of a checkpoint of what the method trains (weights and AdamW state), and the
    seconds to build the model and to write and read that checkpoint. `threads`: torch's threads meanwhile (a
    trial on the CPU uses as many as it has CPUs; None: leave them). `ready`: called after the warm-up, before
    the timed steps (processes measured together wait there for each other: sweep/plan/speed.py)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(task, backbone, weights, kwargs, method, knobs, bn_mode, image_size, batch_size, steps,
                        warmup, device, amp, ready)
    finally:
        torch.set_num_threads(before)


def _measure(task: str, backbone: str, weights: str, kwargs: dict[str, Any], method: str, knobs: dict,
             bn_mode: str | None, image_size: int, batch_size: int, steps: int, warmup: int, device: torch.device,
             amp: bool, ready: Callable[[], Any] | None) -> dict[str, Any]:
    build = _unet if task == "t2i" else _classifier
    if device.type == "cpu":
        # A trial's actor has imported and built models before (its imports count apart, as the overheads'
        # import_s); a first build in a fresh process pays the lazy imports too (3-7 s against 0.1 s here).
        build(backbone, weights, kwargs, method, knobs, bn_mode, image_size, device)
    started = time.perf_counter()
    model, prepared, batch, loss_of = build(backbone, weights, kwargs, method, knobs, bn_mode, image_size, device)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, 0.0))
    _sync(device)
    build_seconds = time.perf_counter() - started
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": amp and device.type == "cuda"}
    inputs = batch(batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _reset_cpu_peak()

    def step() -> None:
        with torch.autocast(**autocast):
            loss = loss_of(inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_mode(model, prepared.bn_mode)
    for _ in range(warmup):
        step()
    _sync(device)
    if ready is not None:
        ready()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    train_seconds = (time.perf_counter() - started) / steps
    # GPU: the peak of allocated memory, the model's weights included. CPU: the peak resident memory of the steps
    # above what the process held before them, plus the model's own tensors (built before the reset).
    model_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    peak = peak_memory_mb(device) if device.type == "cuda" else _cpu_peak() - rss_before + model_mb
    card_mb = torch.cuda.get_device_properties(device).total_memory / 2**20 if device.type == "cuda" else None

    model.eval()
    with torch.no_grad(), torch.autocast(**autocast):
        loss_of(inputs)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            loss_of(inputs)
        _sync(device)
    eval_seconds = (time.perf_counter() - started) / steps

    checkpoint, save_seconds, load_seconds = _checkpoint_timing(model, prepared.bn_mode, optimizer)
    return {
        "device": device_name(device),
        "train_images_per_s": batch_size / train_seconds,
        "eval_images_per_s": batch_size / eval_seconds,
        "peak_memory_mb": float(peak),
        "memory_kind": "peak allocated GPU memory" if device.type == "cuda" else "peak resident memory above the "
                       "model's (Linux VmHWM since reset)",
        "device_memory_mb": card_mb,
        "checkpoint_mb": checkpoint / 2**20,
        "build_s": build_seconds,
        "checkpoint_save_s": save_seconds,
        "checkpoint_load_s": load_seconds,
        "threads": torch.get_num_threads(),
        "trainable_params": prepared.trainable_params,
        "steps": steps,
    }


def _checkpoint_timing(model, bn_mode: str | None, optimizer) -> tuple[int, float, float]:
    """(bytes, seconds to write, seconds to read back) of a checkpoint as a trial writes one (trainables.checkpoints:
    the trained weights twice, the current and the best-validation copy, and the optimizer state)."""
    from safetensors.torch import load_file, save_file

    from trainables.methods import load_trainable_state

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        state = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model, bn_mode).items()}
        for name in ("trained.safetensors", "best.safetensors"):
            save_file(state, os.path.join(tmp, name))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        saved = time.perf_counter() - started
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        started = time.perf_counter()
        load_trainable_state(model, load_file(os.path.join(tmp, "trained.safetensors")))
        load_file(os.path.join(tmp, "best.safetensors"))
        optimizer.load_state_dict(torch.load(os.path.join(tmp, "optimizer.pt"), map_location="cpu",
                                             weights_only=True))
        loaded = time.perf_counter() - started
    return size, saved, loaded


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_cpu_peak() -> float:
    """Reset the process's peak RSS (Linux: writing 5 to clear_refs) and return the current RSS in MB, so the peak
    read after the steps is theirs, not that of an earlier group measured in the same process."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _cpu_peak() -> float:
    return _status_mb("VmHWM")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
