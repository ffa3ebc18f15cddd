"""What a sweep costs besides training and evaluation steps, measured on this machine (sweep/plan/cost.py counts it).

Two measurements, each cached per device type with the calibration's groups (`overheads/<task>` and
`overheads/harness` in `$MEDPEFT_CACHE_DIR/calibration/<device>.json`), rerun with --fresh:

- **The harness** (`measure_harness`): a tiny sweep of the simulated task (trainables/simulated.py: no data, no
  model, a known sleep per epoch) run by the real launcher in a subprocess, on one slot, so its trials run one
  after another: Ray's start and stop, Tune's actors, pauses and restores at synchronous halving's rungs, MLflow
  runs and metrics, a checkpoint per epoch, the report. Every trial's epochs are timestamped in MLflow as they
  are logged; on one slot those timestamps form a single timeline, and the gap before each logged epoch is one
  epoch's work plus whatever came before it (`fit_harness`):

      epoch_s = median gap between two epochs of the same run - the sleep      (log, checkpoint, report)
      trial_s = median gap before a run's first epoch - median epoch gap       (a trial's start: Tune, actor, MLflow)
      pause_s = median gap before a resumed run's epoch - median epoch gap     (a pause at a rung, and the restore)
      sweep_s = the launcher's wall time - everything above, summed            (Ray start/stop, MLflow setup, report)

  A restore the timeline does not show (the rung's last arrival won in every cell) is counted at trial_s.
- **A task's imports** (`measure_imports`): a fresh Python importing the task's training module, less one
  importing the simulated task's: what each new trial actor of that task pays on top of the harness.

Both run on the CPU: on a GPU machine a new actor's CUDA start is not in them.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = "overheads/harness"
SLEEP_S = 0.05  # the simulated epoch's work: small, and long enough that timestamps (ms) order the events
# One slot, three cells of three trials, one rung (epoch 1 of 3): 9 trial starts, 15 trial-epochs and, in each
# cell, a restore unless the rung's last arrival wins (with 2 of 3 chance per cell, so almost surely one or more).
HARNESS_SPEC = f"""
name: overheads
task: simulated
datasets: [{{name: synthetic, id: d0, options: {{train: 16, val: 8, test: 8}}}}]
backbones: [{{name: test_resnet, weights: random}}]
methods: [linear, bitfit, full]
seeds: [0]
image_size: 16
train: {{epochs: 3, epoch_seconds: {SLEEP_S}, val_images: 10, test_images: 10}}
search: {{sampler: grid, trials_per_cell: 3, extend: false, max_epoch_doublings: 0}}
scheduler: {{type: halving, grace_period: 1, reduction_factor: 3}}
resources: {{cpus_per_trial: 1, num_cpus: 1}}
"""
TASK_MODULES = {"classification": "trainables.classification", "simulated": "trainables.simulated",
                "t2i": "trainables.text_to_image"}


class OverheadError(RuntimeError):
    """The harness sweep did not run, or left nothing to measure."""


@dataclass(frozen=True)
class Event:
    """One logged epoch of a trial run: when (seconds), which run, which epoch."""

    t: float
    run: str
    epoch: int


def fit_harness(events: list[Event], wall_s: float, sleep_s: float) -> dict[str, float]:
    """The harness constants (see the module docstring) from one slot's timeline of logged epochs."""
    if len(events) < 2:
        raise OverheadError(f"the harness sweep logged {len(events)} epoch(s); nothing to time")
    events = sorted(events, key=lambda e: (e.t, e.run, e.epoch))
    epochs, starts, restores = [], [], []
    for before, after in itertools.pairwise(events):
        gap = after.t - before.t
        if after.run == before.run and after.epoch == before.epoch + 1:
            epochs.append(gap)
        elif after.epoch == 1:
            starts.append(gap)
        else:
            restores.append(gap)
    if not epochs or not starts:
        raise OverheadError("the harness sweep's timeline has no two epochs of one run, or no second trial")
    epoch_gap = statistics.median(epochs)
    trial_s = max(0.0, statistics.median(starts) - epoch_gap)
    pause_s = max(0.0, statistics.median(restores) - epoch_gap) if restores else trial_s
    trials = len({e.run for e in events})
    counted = trials * trial_s + len(restores) * pause_s + len(events) * epoch_gap
    return {"epoch_s": max(0.0, epoch_gap - sleep_s), "trial_s": trial_s, "pause_s": pause_s,
            "sweep_s": max(0.0, wall_s - counted), "trials": trials, "restores": len(restores),
            "trial_epochs": len(events), "wall_s": wall_s}


def harness_events(uri: str, sweep: str) -> list[Event]:
    """Every trial run's logged epochs (the `epoch` metric's history, timestamped by the trial as it logs it)."""
    from sweep.store import mlflow_experiment
    from trainables.contract import EPOCH, ROLE_TAG

    mlflow = mlflow_experiment.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        raise OverheadError(f"the harness sweep left no MLflow experiment {sweep!r} at {uri}")
    runs = mlflow_experiment.search_all(mlflow, experiment.experiment_id, f"tags.{ROLE_TAG} = 'trial'")
    return [Event(m.timestamp / 1000, run.info.run_id, int(m.value))
            for run in runs for m in mlflow.get_metric_history(run.info.run_id, EPOCH)]


def _python(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                         os.environ.get("PYTHONPATH")])),
                               **(env or {})})


def measure_harness(timeout: float = 600) -> dict[str, float]:
    """Run the harness sweep (HARNESS_SPEC) through `python -m sweep.launch` and fit its constants."""
    with tempfile.TemporaryDirectory(prefix="medpeft-overheads-") as folder:
        spec = Path(folder) / "overheads.yaml"
        spec.write_text(HARNESS_SPEC)
        storage = Path(folder) / "store"
        started = time.perf_counter()
        done = _python("-m", "sweep.launch", "--config", str(spec), "--storage", str(storage), timeout=timeout)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise OverheadError(f"the harness sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                                f"{done.stderr[-2000:]}")
        return fit_harness(harness_events(f"sqlite:///{storage / 'mlflow.db'}", "overheads"), wall, SLEEP_S)


def _import_seconds(module: str, repeats: int) -> float:
    """The fastest of `repeats` fresh interpreters importing ray and `module` (the fastest: page cache warm,
    least disturbed by other work)."""
    best = float("inf")
    code = f"import time; t = time.perf_counter(); import ray, {module}; print(time.perf_counter() - t)"
    for _ in range(repeats):
        done = _python("-c", code)
        if done.returncode != 0:
            raise OverheadError(f"importing {module} failed:\n{done.stderr[-2000:]}")
        best = min(best, float(done.stdout.strip().splitlines()[-1]))
    return best


def measure_imports(task: str, repeats: int = 2) -> dict[str, float]:
    """Seconds a new trial actor of `task` spends importing its training code, beyond the harness's own."""
    if task not in TASK_MODULES:
        raise OverheadError(f"no training module known for task {task!r}")
    mine = _import_seconds(TASK_MODULES[task], repeats)
    harness = _import_seconds(TASK_MODULES["simulated"], repeats) if task != "simulated" else mine
    return {"import_s": max(0.0, mine - harness), "import_total_s": mine}
