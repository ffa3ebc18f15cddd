"""How well a sweep uses its slots, and what a killed driver costs.

slot_efficiency: sum of trial busy time (Tune's time_total_s: setup + training + reporting) divided by
(wall time x slots) for a sweep of 24 short real trials on 2 slots; compared with the same trials run one after
another in a plain in-process loop (no Ray, no tracking), as peer benchmarks run them.

resume_redone_epochs: epochs trained twice per trial that was running when the driver was SIGKILLed, after
`--resume`: the part of the epoch in progress at the kill, plus any whole epoch between the trial's last logged
epoch and the checkpoint it resumed from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, Result, data_args, launch, tune_results

SHORT = ["--set", "methods=[linear, bitfit]", "--set", "fractions=[0.25, 0.5]", "--set", "seeds=[0, 1]",
         "--set", "train.epochs=2", "--set", "scheduler.type=fifo", "--set", "image_size=48"]


def slot_efficiency(quick: bool) -> list[Result]:
    from trainables.classification import train_loop_per_worker
    from trainables.session import LocalSession, use_session

    with tempfile.TemporaryDirectory() as tmp:
        launch("--storage", tmp, "--name", "slots", *data_args(), *SHORT,
               env={"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"})
        trials = tune_results(Path(tmp) / "slots")
    # Tune's `timestamp` is whole seconds (truncated): the last end may be up to 1 s later than it says, so the
    # span is taken 1 s longer, which makes the efficiency a lower bound.
    ends = [rows[-1]["timestamp"] for rows in trials.values()]
    starts = [rows[-1]["timestamp"] - rows[-1]["time_total_s"] for rows in trials.values()]
    busy = sum(rows[-1]["time_total_s"] for rows in trials.values())
    span = max(ends) + 1 - min(starts)
    efficiency = busy / (span * 2)

    started = time.perf_counter()
    for rows in trials.values():  # the same trials, one after another, in this process
        config = {**rows[0]["config"], "storage": None}
        config["tracking"] = {**config["tracking"], "uri": None}
        with use_session(LocalSession()):
            train_loop_per_worker(config)
    sequential = time.perf_counter() - started
    return [Result(
        key="slot_efficiency", value=efficiency, target=">= 0.90",
        ours=f"{len(trials)} trials, {busy:.0f}s of trial time in {span:.0f}s on 2 slots "
             f"({sequential / span:.2f}x faster than the sequential loop)",
        baseline=f"the same trials one after another in a plain loop: {sequential:.0f}s",
        details={"sequential_s": sequential, "sweep_span_s": span, "speedup_vs_sequential": sequential / span},
    )]


def resume_cost(quick: bool) -> list[Result]:
    from mlflow import MlflowClient

    from bench.ray_processes import kill_new_ray_processes, ray_processes

    with tempfile.TemporaryDirectory() as tmp:
        args = ["--storage", tmp, "--name", "killed", *data_args(), "--set", "methods=[linear, bitfit]",
                "--set", "train.epochs=4", "--set", "scheduler.type=fifo", "--set", "image_size=48"]
        before = ray_processes()
        proc = subprocess.Popen([sys.executable, "-m", "sweep.launch", *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        finished = 0
        for line in proc.stdout:
            if line.startswith("[") and "finished" in line:
                finished += 1
                if finished == 3:
                    break
        time.sleep(2.0)  # into the middle of other trials' epochs
        killed_at = time.time() * 1000
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        kill_new_ray_processes(before)

        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("killed").experiment_id
        running = {}
        for run in client.search_runs([experiment], "tags.role = 'trial'"):
            if run.data.tags["status"] == "running":
                stamps = client.get_metric_history(run.info.run_id, "epoch")
                last = max((m.step, m.timestamp) for m in stamps) if stamps else (0, run.info.start_time)
                epoch_ms = run.data.metrics.get("time/epoch_s", 1.0) * 1000
                # The part of an epoch lost at the kill; 0 when the last report landed as the kill was sent.
                running[run.data.tags["trial_key"]] = (last[0], max(0.0, min(1.0, (killed_at - last[1]) / epoch_ms)))
        launch("--storage", tmp, "--name", "killed", "--resume", *data_args())
        redone = []
        for run in client.search_runs([experiment], "tags.role = 'trial'"):
            key = run.data.tags["trial_key"]
            if key in running:
                last_logged, partial = running[key]
                resumed_from = int(run.data.tags.get("resumed_from_epoch", 0))
                redone.append(max(0, last_logged - resumed_from) + partial)
    value = float(np.mean(redone)) if redone else 0.0
    return [Result(
        key="resume_redone_epochs", value=value, target="<= 1",
        ours=f"{value:.2f} epochs trained twice per trial running at the kill ({len(redone)} trials; "
             f"max {max(redone, default=0):.2f})",
        baseline="an uninterrupted sweep trains every epoch once",
        details={"per_trial": redone},
    )]


def run(quick: bool = False) -> list[Result]:
    return slot_efficiency(quick) + resume_cost(quick)
