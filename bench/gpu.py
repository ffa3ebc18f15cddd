"""The GPU benchmark (`python -m bench --only gpu`): ViT-B/16 at 224 px, LoRA and full fine-tuning, bf16 autocast.

- gpu_trainable_ratio_{lora,full}: training images/s of our classification loop (the real trial code: method,
  augmentation on the device, class weights, gradient clipping, the schedule, per-epoch validation excluded)
  over a minimal PyTorch loop on the same model, batch and autocast (target >= 0.97); peak memory of each;
- gpu_packing_4: total images/s of 4 LoRA trials sharing one GPU over one trial's (target >= 3.5, or the card is
  saturated: utilisation near 100%), measured for 1, 2, 4 and 8 concurrent processes, with nvidia-smi's
  utilisation where it is there;
- gpu_loader_ratio: images/s of the loader (cache rows to device, random resized crop + flip on the device) over
  the training step's images/s (>> 1: the data path does not hold training back).

Without a GPU it runs the same code on the CPU with smaller shapes (test_vit at 32 px; 1 and 2 packed processes),
so the tests keep it working; those figures say nothing about a GPU, and the JSON says which device ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.common import REPO, Result


def shapes(quick: bool) -> dict:
    if torch.cuda.is_available():
        return {"backbone": "vit_base_patch16_224", "size": 224, "batch": 64, "steps": 20 if quick else 60,
                "images": 2048, "packing": [1, 2, 4, 8], "device": torch.cuda.get_device_name(0)}
    return {"backbone": "test_vit", "size": 32, "batch": 32, "steps": 5 if quick else 30,
            "images": 128 if quick else 1024, "packing": [1, 2],
            "device": "cpu (no GPU: these figures say nothing about a GPU)"}


def minimal_loop(backbone: str, method: str, size: int, batch: int, steps: int, seconds: float | None = None) -> dict:
    """Images/s and peak memory of a plain loop: the model with the method, AdamW, bf16 autocast on the GPU,
    synthetic batches already on the device, the same augmentation and gradient clipping as ours. With `seconds`,
    it trains for that long instead (packing)."""
    from trainables.backbones import build_backbone
    from trainables.data.loader import random_resized_crop_flip
    from trainables.methods import prepare_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, info = build_backbone(backbone, 2, "random", size)
    model = prepare_model(model, info, method).model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    trained = [p for p in model.parameters() if p.requires_grad]
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}

    def step() -> None:
        x = random_resized_crop_flip(images, generator)
        with torch.autocast(**autocast):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()

    for _ in range(3):
        step()
    _sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started, done = time.perf_counter(), 0
    while (done < steps) if seconds is None else (time.perf_counter() - started < seconds):
        step()
        done += 1
    _sync()
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"images_per_s": done * batch / elapsed, "peak_mb": peak}


def trainable(backbone: str, method: str, size: int, batch: int, images: int, epochs: int = 3) -> dict:
    """Our classification loop on synthetic images: its own `time/train_images_per_s` (training time only) of
    the epochs after the first, and its peak memory."""
    from trainables.classification import train_loop_per_worker
    from trainables.session import LocalSession, use_session

    config = {
        "task": "classification", "seed": 0,
        "data": {"name": "synthetic", "options": {"train": images, "val": 64, "test": 64, "size": size,
                                                  "channels": 3}, "image_size": size},
        "backbone": {"name": backbone, "weights": "random"},
        "method": {"name": method},
        "train": {"epochs": epochs, "batch_size": batch, "lr": 1e-4, "warmup_epochs": 0.5},
        "resources": {"cpus": max(1, os.cpu_count() or 1), "gpus": 1 if torch.cuda.is_available() else 0},
        "tracking": {"sweep": "bench", "cell_key": "bench", "trial_key": "bench/trial=0"},
    }
    session = LocalSession()
    with tempfile.TemporaryDirectory() as cache:
        config["data"]["cache_dir"] = cache
        with use_session(session):
            train_loop_per_worker(config)
    later = session.reports[1:]
    return {"images_per_s": sum(r["time/train_images_per_s"] for r in later) / len(later),
            "peak_mb": session.reports[-1]["sys/peak_mem_mb"]}


def loader_rate(size: int, batch: int, images: int) -> float:
    """Images/s of the training loader: rows gathered from an image cache, moved to the device, augmented there."""
    from trainables.config import DataConfig
    from trainables.data import Batches, load_splits

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as cache:
        data = load_splits(DataConfig(name="synthetic", options={"train": images, "val": 8, "test": 8, "size": size,
                                                                  "channels": 3}, image_size=size, cache_dir=cache), 0)
        batches = Batches(data.train, batch, (0.5,) * 3, (0.5,) * 3, device, shuffle=True, augment=True)
        for _ in batches:  # warm-up
            pass
        _sync()
        started, seen = time.perf_counter(), 0
        for epoch in range(3):
            batches.epoch = epoch
            for x, _y in batches:
                seen += len(x)
        _sync()
        return seen / (time.perf_counter() - started)


def packed(k: int, shape: dict, seconds: float) -> dict:
    """k LoRA trials (processes) training at once on one device: their total images/s, and the GPU's mean
    utilisation while they ran (nvidia-smi), where available."""
    # As a module from the checkout: `bench` is not an installed package (the wheel ships sweep/ and trainables/).
    args = [sys.executable, "-m", "bench.gpu", "--pack", json.dumps({**shape, "seconds": seconds})]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    utilisation = _sample_utilisation(procs)
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["images_per_s"] for p in procs]
    return {"processes": k, "total_images_per_s": sum(rates), "utilisation": utilisation}


def _sample_utilisation(procs) -> float | None:
    samples = []
    while any(p.poll() is None for p in procs):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            samples += [float(v) for v in out[:1]]
        except (OSError, subprocess.SubprocessError, ValueError):
            time.sleep(1)
            continue
        time.sleep(0.5)
    return sum(samples) / len(samples) if samples else None


def run(quick: bool = False) -> list[Result]:
    s = shapes(quick)
    results = []
    for method in ("lora", "full"):
        base = minimal_loop(s["backbone"], method, s["size"], s["batch"], s["steps"])
        ours = trainable(s["backbone"], method, s["size"], s["batch"], s["images"])
        results.append(Result(
            key=f"gpu_trainable_ratio_{method}", value=ours["images_per_s"] / base["images_per_s"],
            target=">= 0.97",
            ours=f"{ours['images_per_s']:,.0f} images/s, our loop ({method}, {s['backbone']} {s['size']}px, batch "
                 f"{s['batch']}, peak {ours['peak_mb']:,.0f} MB) on {s['device']}",
            baseline=f"{base['images_per_s']:,.0f} images/s, a minimal loop (peak {base['peak_mb']:,.0f} MB)",
            details={"ours": ours, "minimal": base, **s},
        ))
    seconds = 2.0 if quick else 20.0
    runs = [packed(k, s, seconds) for k in s["packing"]]
    one = runs[0]["total_images_per_s"]
    four = next((r for r in runs if r["processes"] == 4), runs[-1])
    results.append(Result(
        key="gpu_packing_4", value=four["total_images_per_s"] / one, target=">= 3.5 or saturated",
        ours=f"{four['processes']} LoRA trials at once: {four['total_images_per_s']:,.0f} images/s in total"
             + (f", GPU {four['utilisation']:.0f}% busy" if four["utilisation"] is not None else ""),
        baseline=f"1 trial alone: {one:,.0f} images/s"
                 + (f", GPU {runs[0]['utilisation']:.0f}% busy" if runs[0]["utilisation"] is not None else ""),
        details={"runs": runs, **s},
    ))
    step_rate = minimal_loop(s["backbone"], "lora", s["size"], s["batch"], s["steps"])["images_per_s"]
    loader = loader_rate(s["size"], s["batch"], s["images"])
    results.append(Result(
        key="gpu_loader_ratio", value=loader / step_rate, target=">> 1",
        ours=f"loader with augmentation on the device: {loader:,.0f} images/s",
        baseline=f"LoRA training step: {step_rate:,.0f} images/s ({s['device']})",
    ))
    return results


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--pack":
    shape = json.loads(sys.argv[2])
    torch.set_num_threads(1)
    print(json.dumps(minimal_loop(shape["backbone"], "lora", shape["size"], shape["batch"], 0, shape["seconds"])))
