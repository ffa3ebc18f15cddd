"""Does the search finish its own job? Every cell of a simulated sweep starts with its learning-rate range two
decades too low; its search rounds (sweep/tune/rounds.py) must widen it until the choice is right.

The simulated task's best learning rate per cell is known by construction (trainables/simulated.py: between 1e-4
and 1e-2, from the cell's key); the cells start at 1e-6..1e-4 instead of the default 1e-4..1e-2, 3 grid points (a
decade apart), synchronous halving per cell (grace 1, η 3), 9 epochs, up to 2 extension rounds and 1 epoch
doubling. Everything else is the real launcher: searcher, scheduler, checkpoints, MLflow.

- `rounds_choice_share`: cells whose final choice is within one grid step (a decade) of the true best.
- `rounds_epochs_ratio`: the trial-epochs the range search ran (the planned round and its extension rounds) ÷ an
  exhaustive search's over each cell's final, widened range (every grid point of it, every epoch);
  `rounds_epochs_ratio_with_doubling` counts the epoch doublings' longer trials too (an exhaustive search at the
  planned epochs does nothing of the kind, so this one overstates the cost of finding the range).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from bench.common import Result, launch
from trainables.simulated import curve

EPOCHS, STEP_DECADES = 9, 1.0


def spec(path: Path, datasets: int, seeds: int) -> Path:
    ids = ", ".join(f"{{name: synthetic, id: d{i}, options: {{seed: {i}, train: 64, val: 16, test: 16}}}}"
                    for i in range(datasets))
    methods = ["full", "linear", "bitfit"]
    low = ", ".join(f"{m}: {{lr: {{low: 1.0e-6, high: 1.0e-4}}}}" for m in methods)
    path.write_text(
        "name: rounds\ntask: simulated\n"
        f"datasets: [{ids}]\n"
        "backbones: [{name: test_resnet, weights: random}]\n"
        f"methods: [{', '.join(methods)}]\n"
        f"seeds: {list(range(seeds))}\n"
        "image_size: 16\n"
        f"train: {{epochs: {EPOCHS}, epoch_seconds: 0.005}}\n"
        "search: {sampler: grid, trials_per_cell: 3, max_extensions: 2, max_epoch_doublings: 1,\n"
        f"         spaces: {{{low}}}}}\n"
        "scheduler: {type: halving, grace_period: 1, reduction_factor: 3}\n"
        "resources: {cpus_per_trial: 0.25}\n"
    )
    return path


def true_best(cell: str) -> float:
    """log10 of the cell's best learning rate, read off the simulated curve itself (a fine grid, late epoch)."""
    return max((-6 + i / 1000 for i in range(6001)), key=lambda x: curve(cell, 10**x, 1000))


def run(quick: bool = False) -> list[Result]:
    from sweep.results.table import chosen_trials, trials_table

    datasets, seeds = (2, 2) if quick else (4, 3)
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as folder:
        storage = Path(folder) / "store"
        launch("--config", str(spec(Path(folder) / "rounds.yaml", datasets, seeds)), "--storage", str(storage))
        trials, _ = trials_table(f"sqlite:///{storage / 'mlflow.db'}", "rounds")
    chosen = chosen_trials(trials).set_index("cell_key")
    within, ours, doubled, exhaustive, extended = 0, 0, 0, 0, 0
    for cell, group in trials.groupby("cell_key"):
        lr = float(chosen.loc[cell, "searched.lr"])
        within += abs(math.log10(lr) - true_best(cell)) <= STEP_DECADES + 1e-9
        lrs = group["searched.lr"].astype(float)
        points = round(math.log10(lrs.max() / lrs.min()) / STEP_DECADES) + 1  # the final range's grid
        exhaustive += points * EPOCHS
        longer = group["max_epochs"].astype(float) > EPOCHS  # the doublings' trials
        ours += int(group.loc[~longer, "epochs_run"].sum())
        doubled += int(group.loc[longer, "epochs_run"].sum())
        extended += lrs.max() > 1.0001e-4
    cells = trials["cell_key"].nunique()
    share, ratio = within / cells, ours / exhaustive
    return [
        Result("rounds_choice_share", share, ">= 0.9",
               f"{within}/{cells} cells chose within one grid step (a decade) of the true best learning rate, "
               f"starting two decades too low ({extended} extended upwards)",
               "the simulated task's best learning rate per cell, known by construction",
               {"cells": cells, "within": within}),
        Result("rounds_epochs_ratio", ratio, "<= 0.5",
               f"{ours} trial-epochs (the planned round under halving, and its extension rounds)",
               f"{exhaustive} trial-epochs: every grid point of each cell's final range, {EPOCHS} epochs each",
               {"ours": ours, "exhaustive": exhaustive}),
        Result("rounds_epochs_ratio_with_doubling", (ours + doubled) / exhaustive, "-",
               f"{ours + doubled} trial-epochs ({doubled} of them the epoch doublings' longer trials)",
               f"{exhaustive} trial-epochs: as above", {"doubled": doubled}),
    ]
