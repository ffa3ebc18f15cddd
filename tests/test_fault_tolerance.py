"""Preemption-proof sweeps: the driver killed three times, a trial's worker killed, a diverging trial.

The driver and worker kills use the simulated task (real searcher, scheduler, checkpoints and MLflow; no model)
so the kills can land anywhere within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SHARED_DATA, LaunchedSweep, launch

pytestmark = pytest.mark.slow


def sim_spec(path: Path, epochs: int, epoch_seconds: float, trials: int = 4, cells: str = "",
             scheduler: str = "asha") -> Path:
    path.write_text(
        "name: sim\ntask: simulated\n"
        "datasets: [{name: synthetic, id: a}, {name: synthetic, id: b, options: {seed: 1}}]\n"
        "backbones: [{name: test_resnet, weights: random}]\n"
        f"methods: {cells or '[linear, bitfit, full]'}\n"
        "image_size: 16\n"
        f"train: {{epochs: {epochs}, epoch_seconds: {epoch_seconds}}}\n"
        f"search: {{sampler: grid, trials_per_cell: {trials}}}\n"
        f"scheduler: {{type: {scheduler}, grace_period: 1, reduction_factor: 2}}\n"
        "resources: {cpus_per_trial: 0.5}\n"
    )
    return path


def runs(storage: Path, name: str = "sim"):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name).experiment_id
    return client, client.search_runs([experiment], "tags.role = 'trial'", max_results=1000)


def run_until(args: list[str], lines: int) -> None:
    """Start the launcher and SIGKILL it (and what it started) once it has printed `lines` ended trials."""
    sweep = LaunchedSweep(args)
    sweep.wait_for(lambda: sweep.count(lambda line: line.startswith("[")) >= lines, timeout=300)
    sweep.kill()


# Halving, the default and the scheduler with paused trials; ASHA's saved state is restored in
# tests/test_searcher_scheduler.py.
@pytest.mark.parametrize("scheduler", ["halving"])
def test_driver_killed_three_times(tmp_path, scheduler):
    # halving: kills land while trials wait paused at a rung, which Tune hands back as pending after a restore.
    # 4 cells of 4 trials, rungs at epochs 1, 2 and 4: three kills land before, between and after rungs.
    spec = sim_spec(tmp_path / "sim.yaml", epochs=4, epoch_seconds=0.3, scheduler=scheduler, cells="[linear, full]")
    storage = tmp_path / "store"
    args = ["--config", str(spec), "--storage", str(storage)]
    snapshots = []
    run_until(args, lines=3)
    for round_ in range(3):
        client, before = runs(storage)
        ended = {r.data.tags["trial_key"]: (r.data.tags["status"], r.info.end_time,
                                           [m.step for m in client.get_metric_history(r.info.run_id, "epoch")])
                 for r in before if r.data.tags["status"] in ("finished", "stopped_early")}
        snapshots.append(ended)
        if round_ < 2:
            run_until([*args[2:], "--name", "sim", "--resume"], lines=len(ended) + 3)
    final = launch(*args[2:], "--name", "sim", "--resume")
    assert "4/4 cells complete" in final.stdout

    client, after = runs(storage)
    keys = [r.data.tags["trial_key"] for r in after]
    assert len(keys) == len(set(keys)) == 16, "one MLflow run per trial, and no cell over its budget of 4"
    assert all(int(k.rsplit("=", 1)[1]) < 4 for k in keys)
    assert {r.data.tags["status"] for r in after} <= {"finished", "stopped_early"}
    now = {r.data.tags["trial_key"]: r for r in after}
    for ended in snapshots:
        assert ended, "every kill should come after some trials ended"
        for key, (status, end_time, epochs) in ended.items():
            assert now[key].data.tags["status"] == status, f"{key} was {status} before a kill"
            assert now[key].info.end_time == end_time, f"{key} ran again after a resume"
            assert [m.step for m in client.get_metric_history(now[key].info.run_id, "epoch")] == epochs
    assert any(s == "stopped_early" for ended in snapshots for s, _, _ in ended.values())
    for run in after:  # every epoch logged exactly once across all attempts
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert steps == list(range(1, len(steps) + 1))


def test_killed_worker_restarts_from_its_checkpoint(tmp_path):
    spec = sim_spec(tmp_path / "sim.yaml", epochs=6, epoch_seconds=1.0, trials=1, cells="[linear]")
    spec.write_text(spec.read_text().replace("{name: synthetic, id: b, options: {seed: 1}}", "").replace(", ]", "]"))
    storage = tmp_path / "store"
    sweep = LaunchedSweep(["--config", str(spec), "--storage", str(storage)])
    killed_after = None

    def kill_worker_after_two_epochs() -> bool:
        nonlocal killed_after
        if not (storage / "mlflow.db").exists():
            return False
        try:
            client, found = runs(storage)
        except Exception:  # the experiment is not created yet
            return False
        logged = [m.step for r in found for m in client.get_metric_history(r.info.run_id, "epoch")]
        if len(logged) < 2:
            return False
        workers = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
        for pid in workers.split():
            os.kill(int(pid), signal.SIGKILL)
        killed_after = max(logged)
        return True

    sweep.wait_for(kill_worker_after_two_epochs, timeout=240)
    code, out = sweep.wait(300), sweep.output
    assert killed_after is not None, f"the trial never got going:\n{out[-3000:]}"
    assert code == 0, out[-3000:]
    assert "1/1 cells complete" in out
    client, (run,) = runs(storage)
    assert run.data.tags["status"] == "finished"
    resumed_from = int(run.data.tags["resumed_from_epoch"])
    assert killed_after - 1 <= resumed_from <= killed_after + 1  # at most the epoch in progress is redone
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3, 4, 5, 6]


def test_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path):
    data = ["--data-root", str(SHARED_DATA)] if (SHARED_DATA / "medmnist").is_dir() else []
    result = launch("--storage", str(tmp_path), *data,
                    "--set", "backbones=[{name: test_efficientnet, weights: random}]", "--set", "image_size=32",
                    "--set", "methods=[linear]", "--set", "fractions=[0.25]", "--set", "train.epochs=2",
                    "--set", "train.optimizer=sgd", "--set", "train.grad_clip=null",
                    "--set", "search.spaces={linear: {lr: [0.001, 1.0e+38]}}", "--set", "search.trials_per_cell=2",
                    "--set", "scheduler.type=fifo")
    assert "1/1 cells complete" in result.stdout and "FAILED at epoch" in result.stdout
    client, found = runs(tmp_path, "quickstart")
    by_lr = {float(r.data.params["searched.lr"]): r for r in found}
    failed = by_lr[1e38]
    assert failed.data.tags["status"] == "failed" and failed.info.status == "FAILED"
    assert "loss became" in failed.data.tags["failure_reason"]
    (cell,) = client.search_runs([found[0].info.experiment_id], "tags.role = 'cell'")
    assert cell.data.tags["chosen_trial"] == by_lr[1e-3].data.tags["trial_key"]
