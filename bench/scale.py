"""The paper-size grid without a cluster: a simulated task (deterministic learning curves, a few ms of work per
epoch) through the real searcher, scheduler, storage, checkpoints and MLflow logging.

sim_overhead_per_trial_s: wall time per trial beyond perfect packing of the trials' own work onto the slots, with
the defaults (grid sampler, synchronous halving, whose rungs pause and restart trials); the same with TPE and
asynchronous ASHA as `sim_overhead_per_trial_s_asha`. Also: the driver's peak memory, and after a SIGKILL
halfway, the time from `--resume` to trials ending again.
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


def spec(path: Path, datasets: int, fractions: int, scheduler: str = "halving") -> Path:
    """The grid; `halving` (the default scheduler) searches a grid of learning rates, as paper.yaml does, and
    `asha` lets TPE pick them."""
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
        f"search: {{sampler: {'grid' if scheduler == 'halving' else 'tpe'}, trials_per_cell: 7}}\n"
        f"scheduler: {{type: {scheduler}, grace_period: 1, reduction_factor: 3}}\n"
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


def sweep_span(storage: Path) -> tuple[int, float, int, int]:
    """(trials, seconds from the first trial's start to the last one's end, trial-epochs run, runs never ended)
    from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("scale").experiment_id], "tags.role = 'trial'",
                              max_results=50_000)
    ended = [r.info.end_time for r in runs if r.info.end_time]
    span = (max(ended) - min(r.info.start_time for r in runs)) / 1000
    return len(runs), span, sum(int(r.data.metrics.get("epoch", 0)) for r in runs), len(runs) - len(ended)


def run(quick: bool = False) -> list[Result]:
    from bench.ray_processes import kill_new_ray_processes, ray_processes

    datasets, fractions = (7, 1) if quick else (7, 5)
    cells = 2 * 10 * datasets * fractions
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("halving",) if quick else ("halving", "asha"):
            path = spec(Path(tmp) / f"{scheduler}.yaml", datasets, fractions, scheduler)
            seconds, peak_mb, _ = run_watched(["--config", str(path), "--storage", f"{tmp}/{scheduler}"])
            trials, span, epochs, _ = sweep_span(Path(tmp) / scheduler)
            ideal = epochs * EPOCH_SECONDS / SLOTS
            measured[scheduler] = {"trials": trials, "span_s": span, "epochs": epochs, "ideal_s": ideal,
                                   "overhead_s": (span - ideal) / trials, "command_s": seconds, "peak_mb": peak_mb}

        # The default scheduler, killed halfway and resumed: time until trials end again.
        path = Path(tmp) / "halving.yaml"
        before = ray_processes()
        run_watched(["--config", str(path), "--storage", f"{tmp}/killed"], stop_after=measured["halving"]["trials"] // 2)
        time.sleep(1)
        kill_new_ray_processes(before)
        resumed_seconds, _, first_trial = run_watched(["--name", "scale", "--storage", f"{tmp}/killed", "--resume"])
        resumed_trials, _, _, unended = sweep_span(Path(tmp) / "killed")

    halving, asha = measured["halving"], measured.get("asha")

    def described(m: dict, how: str) -> str:
        return (f"{m['trials']} trials over {cells} cells ({how}) in {m['span_s']:.0f}s on {SLOTS} slots, "
                f"{m['epochs']} trial-epochs ({m['trials'] / m['span_s']:.1f} trials/s; whole command "
                f"{m['command_s']:.0f}s)")

    overheads = [
        Result(key=key, value=m["overhead_s"], target="<= 0.1", ours=described(m, how),
               baseline=f"the trials' own work packed perfectly: {m['ideal_s']:.0f}s", details={"cells": cells, **m})
        for key, m, how in [("sim_overhead_per_trial_s", halving, "grid sampler, synchronous halving: the defaults"),
                            ("sim_overhead_per_trial_s_asha", asha, "TPE, asynchronous ASHA")] if m]
    with_asha = f"; {asha['peak_mb']:.0f} MB with ASHA" if asha else ""
    return [
        *overheads,
        Result(key="sim_driver_peak_mb", value=halving["peak_mb"], target="-",
               ours=f"driver peak RSS {halving['peak_mb']:.0f} MB for {halving['trials']} trials (halving{with_asha})",
               baseline="-"),
        Result(key="sim_resume_s", value=first_trial, target="-",
               ours=f"{first_trial:.1f}s from --resume to the next ended trial after a SIGKILL halfway "
                    f"(halving; whole resumed run {resumed_seconds:.0f}s)" if first_trial else "resume did not report",
               baseline="-", details={"trials_after_resume": resumed_trials, "runs_never_ended": unended}),
    ]
