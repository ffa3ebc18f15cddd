"""What per-cell early stopping saves, and what it costs in wrong choices.

The same cells (real MedMNIST data, the real ImageNet-pretrained EfficientNet-Lite0, a log grid of learning
rates) run three times: exhaustively (every trial to the last epoch), with per-cell synchronous successive
halving (`halving`) and with per-cell asynchronous ASHA (`asha`). For each early-stopping run: trial-epochs run
÷ the exhaustive run's, and the share of cells where it chose the same learning rate as the exhaustive search,
or one whose final validation accuracy (in the exhaustive run) is within 0.5 points of the exhaustive best.
`asha_*` keys are for the sweep's default scheduler (halving); `async_asha_*` for Ray's asynchronous ASHA per cell.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from bench.common import Result, data_args, launch
from trainables.contract import SCORE


def same_choice(exhaustive: pd.DataFrame, searched: pd.DataFrame) -> tuple[int, int]:
    """Cells where `searched` chose the exhaustive choice or one within 0.5 points of it; cells in all."""
    from sweep.results.table import chosen_trials

    best_exhaustive = chosen_trials(exhaustive).set_index("cell_key")
    best_searched = chosen_trials(searched).set_index("cell_key")
    final_val = exhaustive.set_index(["cell_key", "searched.lr"])["val_best"]
    same = 0
    for cell, row in best_exhaustive.iterrows():
        lr = best_searched.loc[cell, "searched.lr"] if cell in best_searched.index else None
        if lr is not None and (lr == row["searched.lr"] or row["val_best"] - final_val[(cell, lr)] <= 0.005):
            same += 1
    return same, len(best_exhaustive)


class _Trial:
    """A trial replayed from its exhaustive learning curve, as the scheduler sees one."""

    def __init__(self, key: str, curve: dict[int, dict[str, float]]) -> None:
        self.trial_id, self.curve, self.status, self.epoch = key, curve, "PENDING", 0
        self.config = {"tracking": {"cell_key": key.rsplit("/trial=", 1)[0], "trial_key": key}}

    def set_status(self, status: str) -> None:
        self.status = status


class _Controller:
    """What PerCellHalving uses of Tune's controller."""

    def __init__(self, trials: list[_Trial]) -> None:
        self.trials = trials
        self.search_alg = SimpleNamespace(is_finished=lambda: True)

    def get_trials(self) -> list[_Trial]:
        return self.trials

    def stop_trial(self, trial: _Trial) -> None:
        trial.status = "TERMINATED"


def replay_halving(curves: dict[str, dict[int, dict[str, float]]], max_t: int, grace: int, eta: float) -> dict:
    """Run the sweep's own PerCellHalving over the exhaustive run's curves (training is deterministic, so a
    halving run reproduces them epoch for epoch): the trial-epochs it would spend and the trials that finish."""
    from ray.tune.schedulers import TrialScheduler

    from sweep.tune.scheduler import PerCellHalving
    from sweep.tune.searcher import SweepState

    trials = [_Trial(key, curve) for key, curve in sorted(curves.items())]
    budgets = Counter(t.config["tracking"]["cell_key"] for t in trials)
    scheduler = PerCellHalving(state=SweepState(), budgets=dict(budgets), max_t=max_t, grace_period=grace,
                               reduction_factor=eta)
    controller, epochs = _Controller(trials), 0
    while (trial := scheduler.choose_trial_to_run(controller)) is not None:
        trial.status = "RUNNING"
        while trial.status == "RUNNING":
            trial.epoch += 1
            epochs += 1
            decision = scheduler.on_trial_result(controller, trial, {"epoch": trial.epoch, **trial.curve[trial.epoch]})
            if decision == TrialScheduler.PAUSE:
                trial.status = "PAUSED"
            elif decision == TrialScheduler.STOP or trial.epoch == max_t:
                trial.status = "TERMINATED"
    return {"epochs": epochs, "finished": {t.trial_id for t in trials if t.epoch == max_t}}


def curves_of(uri: str, runs: pd.DataFrame) -> dict[str, dict[int, dict[str, float]]]:
    from sweep.store import mlflow_experiment

    client, curves = mlflow_experiment.client(uri), {}
    for key, run_id in zip(runs["trial_key"], runs["run_id"], strict=True):
        by_epoch: dict[int, dict[str, float]] = {}
        for metric in (SCORE, "val/best_loss"):
            for m in client.get_metric_history(run_id, metric):
                by_epoch.setdefault(m.step, {})[metric] = m.value
        curves[key] = by_epoch
    return curves


def run(quick: bool = False) -> list[Result]:
    from sweep.results.table import trials_table

    # Full: 8 cells x 8 learning rates x 27 epochs, about the study's length of training; quick: 4 cells x 6 x 9.
    # Linear probing at 32 px keeps the exhaustive run affordable on a CPU. Rungs as in paper.yaml (grace 3,
    # reduction 3: epochs 3 and 9; quick: grace 1, epochs 1 and 3): one epoch of 27 is still warm-up noise (with
    # grace 1 both schedulers chose as the exhaustive search in 6 of 8 cells).
    datasets = "[{name: medmnist, options: {subset: breastmnist}, on_duplicate: drop, on_missing: synthetic}" + (
        "]" if quick else ", {name: medmnist, options: {subset: retinamnist}, on_missing: synthetic}]")
    lrs, epochs = (6, 9) if quick else (8, 27)
    common = ["--set", f"datasets={datasets}", "--set", "methods=[linear]", "--set", "fractions=[0.5, 1.0]",
              "--set", "seeds=[0, 1]", "--set", "image_size=32", "--set", f"train.epochs={epochs}",
              "--set", f"search.trials_per_cell={lrs}", "--set", f"scheduler.grace_period={1 if quick else 3}",
              "--set", "scheduler.reduction_factor=3", *data_args()]
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for mode in ("halving", "fifo", "asha"):
            started = time.monotonic()
            launch("--storage", tmp, "--name", mode, "--set", f"scheduler.type={mode}", *common)
            seconds[mode] = time.monotonic() - started
            runs[mode], _ = trials_table(uri, mode)
        curves = curves_of(uri, runs["fifo"])
    exhaustive = runs["fifo"]
    total = int(exhaustive["epochs_run"].sum())
    grid = f"{exhaustive['cell_key'].nunique()} cells x {lrs} learning rates x {epochs} epochs"
    results = []
    for mode, prefix, name in (("halving", "asha", "per-cell synchronous successive halving (the default)"),
                               ("asha", "async_asha", "per-cell asynchronous ASHA")):
        ran = int(runs[mode]["epochs_run"].sum())
        same, cells = same_choice(exhaustive, runs[mode])
        results += [
            Result(key=f"{prefix}_epochs_ratio", value=ran / total, target="<= 0.33",
                   ours=f"{ran} trial-epochs with {name} (grace {1 if quick else 3}, reduction 3), "
                        f"{seconds[mode]:.0f} s",
                   baseline=f"{total} trial-epochs exhaustive ({grid}), {seconds['fifo']:.0f} s",
                   details={"wall_ratio": seconds[mode] / seconds["fifo"]}),
            Result(key=f"{prefix}_same_choice_share", value=same / cells, target=">= 0.90",
                   ours=f"{same} of {cells} cells: {name} chose the exhaustive choice or one within 0.5 points of "
                        "its validation accuracy",
                   baseline="the exhaustive search's choice per cell"),
        ]
    # How the rung settings trade savings for regret on these same cells: halving replayed on the exhaustive curves.
    for eta in (2, 3, 4):
        for grace in (1, 2, 3, 4):
            replay = replay_halving(curves, epochs, grace, eta)
            chosen = exhaustive[exhaustive["trial_key"].isin(replay["finished"])].assign(status="finished")
            same, cells = same_choice(exhaustive, chosen)
            results[0].details.setdefault("replayed_rung_settings", []).append(
                {"grace": grace, "reduction": eta, "epochs_ratio": round(replay["epochs"] / total, 3),
                 "same_choice_share": same / cells})
    return results
