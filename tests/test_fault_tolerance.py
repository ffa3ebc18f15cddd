"""Preemption-proof sweeps: the driver killed three times, a trial's worker killed, a diverging trial.

The driver and worker kills use the simulated task (real searcher, scheduler, checkpoints and MLflow; no model)
so the kills can land anywhere within seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.ray_processes import kill_new_ray_processes, new_ray_processes, ray_processes
from tests.conftest import SHARED_DATA, LaunchedSweep, launch
from trainables.simulated import curve

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
        f"search: {{sampler: grid, trials_per_cell: {trials}, extend: false, max_epoch_doublings: 0}}\n"
        f"scheduler: {{type: {scheduler}, grace_period: 1, reduction_factor: 2}}\n"
        "resources: {cpus_per_trial: 0.5}\n"
    )
    return path


def runs(storage: Path, name: str = "sim"):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name).experiment_id
    return client, client.search_runs([experiment], "tags.role = 'trial'", max_results=1000)


def logged_epoch(storage: Path, key_suffix: str, step: int) -> bool:
    """Has a trial whose key ends with `key_suffix` logged epoch `step` to MLflow? (read straight from sqlite: the
    launcher writes it as we poll)"""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{storage / 'mlflow.db'}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(
                "SELECT count(*) FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid WHERE t.key = 'trial_key' "
                "AND t.value LIKE ? AND m.key = 'epoch' AND m.step >= ?", (f"%{key_suffix}", step)).fetchone()[0] > 0
    except sqlite3.Error:  # not created yet, or busy
        return False


def halving_by_the_curve(cell: str, lrs: list[float], rung: int) -> float:
    """The learning rate synchronous halving keeps at a rung with one survivor (3 trials, eta 3), computed from the
    simulated task's definition: the best validation score reached by the rung (ties would go to the contract's
    rule; the test asserts there are none)."""
    at_rung = {lr: max(curve(cell, lr, epoch) for epoch in range(1, rung + 1)) for lr in lrs}
    ranked = sorted(at_rung.values(), reverse=True)
    assert ranked[0] != ranked[1], "a tie at the rung: pick another spec"
    return max(at_rung, key=at_rung.get)


def after(seconds: float, condition) -> bool:
    """`condition`, and once it holds, `seconds` more (so that a trial is well inside its next epoch)."""
    if not condition():
        return False
    time.sleep(seconds)
    return True


@pytest.mark.long
def test_interrupted_halving_sweep_makes_the_choices_of_an_uninterrupted_one(tmp_path):
    """Ctrl-C and kill -9 land where a rung is open: trials paused at it, one running towards it (it checkpoints the
    rung's epoch while the driver goes down, so the driver never hears that report), and trials that ended since the
    last saved state (after Ctrl-C, as the issue's run: the driver's last state is saved while trials go on for a
    few seconds). Every rung must still be decided once, on every trial of its cell, exactly as without the
    interruptions, and nothing that ended may run again. 4 cells of 3 trials, 2 slots, a rung at epoch 2 of 4."""
    spec = sim_spec(tmp_path / "sim.yaml", epochs=4, epoch_seconds=1.0, trials=3, scheduler="halving",
                    cells="[linear, bitfit, full, bias]")
    spec.write_text(spec.read_text().replace("{name: synthetic, id: b, options: {seed: 1}}", "").replace(", ]", "]")
                    .replace("grace_period: 1, reduction_factor: 2", "grace_period: 2, reduction_factor: 3")
                    .replace("{cpus_per_trial: 0.5}", "{cpus_per_trial: 0.5, num_cpus: 1}"))
    storage = tmp_path / "store"
    first = ["--config", str(spec), "--storage", str(storage)]
    resume = ["--storage", str(storage), "--name", "sim", "--resume"]
    rays_before = ray_processes()
    ended_before: list[dict] = []

    def interrupt(args: list[str], moment, how: str) -> None:
        sweep = LaunchedSweep(args)
        if not sweep.wait_for(lambda: moment(sweep), timeout=300):
            sweep.kill()
            raise AssertionError(f"never reached the moment:\n{sweep.output[-3000:]}")
        if how == "ctrl-c":  # to the launcher's process group, as a terminal sends it
            os.killpg(sweep.proc.pid, signal.SIGINT)
            assert sweep.wait(180) == 130, sweep.output[-3000:]
        else:  # kill -9 of the launcher alone: what its Ray leaves is the next launcher's to clean up
            os.kill(sweep.proc.pid, signal.SIGKILL)
            sweep.proc.wait()
        _, found = runs(storage)
        ended_before.append({r.data.tags["trial_key"]: (r.data.tags["status"], r.info.end_time) for r in found
                             if r.data.tags["status"] in ("finished", "stopped_early")})

    try:
        # 1. Ctrl-C while the first cell's third trial trains towards the rung its two others wait paused at.
        interrupt(first, lambda s: after(0.5, lambda: logged_epoch(storage, "linear/frac=1/seed=0/trial=2", 1)),
                  "ctrl-c")
        # 2. kill -9 at the same moment of the second cell.
        interrupt(resume, lambda s: after(0.5, lambda: logged_epoch(storage, "bitfit/frac=1/seed=0/trial=2", 1)),
                  "kill")
        # 3. Ctrl-C 2 s after a trial ended (the run), while the others go on.
        interrupt(resume, lambda s: after(2.0, lambda: s.count(lambda line: line.startswith("[")) >= 1), "ctrl-c")
        # 4. kill -9 just after a trial ended, before Tune's next saved state has it.
        interrupt(resume, lambda s: s.count(lambda line: line.startswith("[")) >= 1, "kill")
        final = launch(*resume)
        assert "4/4 cells complete" in final.stdout, final.stdout[-3000:]
    finally:
        time.sleep(1)
        left = new_ray_processes(rays_before)
        kill_new_ray_processes(rays_before)
    assert not left, "Ray processes of a killed launcher outlived the launcher that resumed it"

    client, found = runs(storage)
    keys = [r.data.tags["trial_key"] for r in found]
    assert len(keys) == len(set(keys)) == 12, "one MLflow run per trial, and no cell over its budget"
    cells: dict[str, dict[float, object]] = {}
    for r in found:
        cells.setdefault(r.data.tags["trial_key"].rsplit("/", 1)[0], {})[float(r.data.params["train.lr"])] = r
    cell_runs = {c.data.tags["cell_key"]: c for c in
                 client.search_runs([found[0].info.experiment_id], "tags.role = 'cell'")}
    for cell, by_lr in cells.items():
        winner = halving_by_the_curve(cell, sorted(by_lr), rung=2)
        for lr, r in by_lr.items():
            epochs = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
            expected = ("finished", [1, 2, 3, 4]) if lr == winner else ("stopped_early", [1, 2])
            assert (r.data.tags["status"], epochs) == expected, f"{cell} lr={lr}"
        assert cell_runs[cell].data.tags["chosen_trial"] == by_lr[winner].data.tags["trial_key"]
    now = {r.data.tags["trial_key"]: (r.data.tags["status"], r.info.end_time) for r in found}
    assert any(ended_before), "no trial had ended at any interruption"
    for ended in ended_before:
        for key, before in ended.items():
            assert now[key] == before, f"{key} ran again after a resume"


@pytest.mark.long
def test_resume_of_a_sweep_stopped_before_tune_saved_anything_starts_it(tmp_path):
    """Ctrl-C while the launcher starts Ray leaves the sweep's folder holding its inputs (medpeft-sweep.json) and no
    Tune state yet (tuner.pkl): its name is taken, so --resume must start it from those inputs, not fail on the
    missing state."""
    from sweep.plan.validate import make_plan
    from sweep.store.storage import parse_storage
    from sweep.tune.run import save_inputs
    from tests.conftest import load_spec

    spec = sim_spec(tmp_path / "sim.yaml", epochs=2, epoch_seconds=0.0, trials=2, cells="[linear]", scheduler="fifo")
    spec.write_text(spec.read_text().replace("{name: synthetic, id: b, options: {seed: 1}}", "").replace(", ]", "]"))
    storage = tmp_path / "store"
    save_inputs(parse_storage(str(storage)), "sim", make_plan(load_spec(spec), spec, None), None,
                f"sqlite:///{storage / 'mlflow.db'}")
    result = launch("--storage", str(storage), "--name", "sim", "--resume")
    assert "1/1 cells complete" in result.stdout, result.stdout[-3000:]
    client, found = runs(storage)
    assert sorted(r.data.tags["status"] for r in found) == ["finished", "finished"]  # each trial once, to its end
    assert all([m.step for m in client.get_metric_history(r.info.run_id, "epoch")] == [1, 2] for r in found)


@pytest.mark.long
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


@pytest.mark.long
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
