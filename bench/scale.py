"""The paper-size grid without a cluster: a simulated task (deterministic learning curves, a few ms of work per
epoch) through the real searcher, scheduler, storage, checkpoints and MLflow logging.

sim_overhead_per_trial_s: wall time per trial beyond perfect packing of the trials' own work onto the slots.
Also: the driver's peak memory, and after a SIGKILL halfway, the time from `--resume` to trials running again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import REPO, Result

EPOCHS, EPOCH_SECONDS, SLOTS = 10, 0.005, 8


def spec(path: Path, datasets: int, fractions: int) -> Path:
    ids = ", ".join(f"{{name: synthetic, id: d{i}, options: {{seed: {i}, train: 64, val: 16, test: 16}}}}"
                    for i in range(datasets))
    methods = "[full, linear, bitfit, batchnorm, ssf, conv_adapter, lora_conv, peft:ia3, peft:dora, peft:loha]"
    path.write_text(
        "name: scale\ntask: simulated\n"
        f"datasets: [{ids}]\n"
        f"backbones: [{{name: test_resnet, weights: random}}, {{name: test_efficientnet, weights: random}}]\n"
        f"methods: {methods}\n"
        f"fractions: {[round(1 / 2**i, 4) for i in range(fractions)]}\n"
        "image_size: 16\n"
        f"train: {{epochs: {EPOCHS}, epoch_seconds: {EPOCH_SECONDS}}}\n"
        "search: {sampler: tpe, trials_per_cell: 7}\n"
        "scheduler: {type: asha, grace_period: 1, reduction_factor: 3}\n"
        f"resources: {{cpus_per_trial: {2 / SLOTS}}}\n"
    )
    return path


def run_watched(args: list[str], stop_after: int | None = None) -> tuple[float, float, float | None]:
    """Run the launcher; return (seconds, peak driver RSS in MB, seconds to the first trial line)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "sweep.launch", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver, peak, first, lines = psutil.Process(proc.pid), 0.0, None, 0
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        for line in proc.stdout.readlines():
            if line.startswith("["):
                lines += 1
                first = first or time.monotonic() - started
        if stop_after is not None and lines >= stop_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    return time.monotonic() - started, peak, first


def run(quick: bool = False) -> list[Result]:
    from mlflow import MlflowClient

    from sweep.orphans import kill_new_ray_processes, ray_processes

    datasets, fractions = (7, 1) if quick else (7, 5)
    with tempfile.TemporaryDirectory() as tmp:
        path = spec(Path(tmp) / "scale.yaml", datasets, fractions)
        seconds, peak_mb, _ = run_watched(["--config", str(path), "--storage", f"{tmp}/full"])
        client = MlflowClient(f"sqlite:///{tmp}/full/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("scale").experiment_id], "tags.role = 'trial'",
                                  max_results=50_000)
        span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
        epochs = sum(int(r.data.metrics.get("epoch", 0)) for r in runs)
        ideal = epochs * EPOCH_SECONDS / SLOTS
        overhead = (span - ideal) / len(runs)
        cells = 2 * 10 * datasets * fractions

        # Kill halfway, resume, and time until trials run again.
        before = ray_processes()
        run_watched(["--config", str(path), "--storage", f"{tmp}/killed"], stop_after=len(runs) // 2)
        time.sleep(1)
        kill_new_ray_processes(before)
        resumed_seconds, _, first_trial = run_watched(["--name", "scale", "--storage", f"{tmp}/killed", "--resume"])
        launch_ok = (Path(tmp) / "killed" / "scale").is_dir()
    return [
        Result(key="sim_overhead_per_trial_s", value=overhead, target="<= 0.1",
               ours=f"{len(runs)} trials over {cells} cells in {span:.0f}s on {SLOTS} slots "
                    f"({len(runs) / span:.1f} trials/s; whole command {seconds:.0f}s)",
               baseline=f"the trials' own work packed perfectly: {ideal:.0f}s",
               details={"trials": len(runs), "cells": cells, "span_s": span}),
        Result(key="sim_driver_peak_mb", value=peak_mb, target="-",
               ours=f"driver peak RSS {peak_mb:.0f} MB for {len(runs)} trials", baseline="-"),
        Result(key="sim_resume_s", value=first_trial, target="-",
               ours=f"{first_trial:.1f}s from --resume to the next finished trial after a SIGKILL halfway "
                    f"(whole resumed run {resumed_seconds:.0f}s)" if first_trial else "resume did not report",
               baseline="-", details={"experiment_kept": launch_ok}),
    ]
