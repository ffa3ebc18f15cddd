"""What per-cell ASHA saves, and what it costs in wrong choices.

The same cells (real MedMNIST data, the real ImageNet-pretrained EfficientNet-Lite0, a log grid of learning
rates) run twice: exhaustively (every trial to the last epoch) and with per-cell ASHA. asha_epochs_ratio: trial-
epochs ASHA ran / the exhaustive run's. asha_same_choice_share: share of cells where ASHA chose the same learning
rate as the exhaustive search, or one whose final validation accuracy (in the exhaustive run) is within 0.5 points
of the exhaustive best.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Result, data_args, launch


def run(quick: bool = False) -> list[Result]:
    from sweep.analysis import chosen_trials, trials_table

    # Full: 8 cells x 8 learning rates x 27 epochs (rungs at 1, 3 and 9 epochs), about the study's length of
    # training; quick: 4 cells x 6 x 9. Linear probing at 32 px keeps the exhaustive run affordable on a CPU.
    datasets = "[{name: medmnist, options: {subset: breastmnist}, on_duplicate: drop, on_missing: synthetic}" + (
        "]" if quick else ", {name: medmnist, options: {subset: retinamnist}, on_missing: synthetic}]")
    lrs, epochs = (6, 9) if quick else (8, 27)
    common = ["--set", f"datasets={datasets}", "--set", "methods=[linear]", "--set", "fractions=[0.5, 1.0]",
              "--set", "seeds=[0, 1]", "--set", "image_size=32", "--set", f"train.epochs={epochs}",
              "--set", f"search.trials_per_cell={lrs}", "--set", "scheduler.grace_period=1",
              "--set", "scheduler.reduction_factor=3", *data_args()]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("fifo", "asha"):
            launch("--storage", tmp, "--name", mode, "--set", f"scheduler.type={mode}", *common)
            runs[mode], _ = trials_table(f"sqlite:///{Path(tmp) / 'mlflow.db'}", mode)
    exhaustive, asha = runs["fifo"], runs["asha"]
    ratio = asha["epochs_run"].sum() / exhaustive["epochs_run"].sum()
    best_exhaustive = chosen_trials(exhaustive).set_index("cell_key")
    best_asha = chosen_trials(asha).set_index("cell_key")
    final_val = exhaustive.set_index(["cell_key", "searched.lr"])["val_best"]
    same = 0
    for cell, row in best_exhaustive.iterrows():
        lr = best_asha.loc[cell, "searched.lr"] if cell in best_asha.index else None
        if lr is not None and (lr == row["searched.lr"] or row["val_best"] - final_val[(cell, lr)] <= 0.005):
            same += 1
    share = same / len(best_exhaustive)
    return [
        Result(key="asha_epochs_ratio", value=float(ratio), target="<= 0.33",
               ours=f"{int(asha['epochs_run'].sum())} trial-epochs with per-cell ASHA (grace 1, reduction 3)",
               baseline=f"{int(exhaustive['epochs_run'].sum())} trial-epochs exhaustive ({len(best_exhaustive)} "
                        f"cells x {lrs} learning rates x {epochs} epochs)"),
        Result(key="asha_same_choice_share", value=share, target=">= 0.90",
               ours=f"{same} of {len(best_exhaustive)} cells: ASHA's choice is the exhaustive one or within 0.5 "
                    "points of its validation accuracy",
               baseline="the exhaustive search's choice per cell"),
    ]
