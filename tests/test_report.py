"""`python -m sweep.report`: files, numbers recomputed independently, validation-only choice, HTML in Chromium,
partial sweeps, comparisons."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from sweep.plan.grid import base_config, expand, with_searched
from sweep.plan.spec import SweepSpec, load_method_spaces
from sweep.report import build as report
from sweep.report import cli as report_cli
from sweep.store import mlflow_experiment
from sweep.store.mlflow_experiment import Tracking
from tests.conftest import needs_shared_data
from trainables.config import TrialConfig
from trainables.contract import EPOCH, SCORE, VAL_BEST_LOSS, Status
from trainables.methods.registry import PreparedModel, get_method, resolve_knobs
from trainables.session import LocalSession
from trainables.tasks import get_task
from trainables.trial import Start, Trial, run_params, run_tags

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COLUMNS = ["sweep", "trial_key", "cell_key", "run_id", "task", "dataset", "backbone", "method", "fraction", "seed",
           "status", "stopped_early", "score", "val_metric", "val_best", "val_best_loss", "test_metric", "test_main",
           "test_acc", "test_balanced_acc",
           "test_auroc", "trainable_params", "total_params", "trainable_share", "epochs_run", "max_epochs",
           "wall_seconds", "peak_mem_mb", "is_best_in_cell", "searched.lr", "train.lr", "train.epochs"]


EPOCHS = 4  # every fake trial's train.epochs


def fake_sweep(uri: str, name: str, cells: dict[tuple, list[dict]], budget: int | None = None,
               backbone: str = "bb") -> Tracking:
    """A sweep's MLflow experiment, written by our own writers: the cells planned from a spec (sweep.plan.grid),
    the experiment, parent run and cell runs by the driver (sweep.store.mlflow_experiment.prepare), and each trial
    by the worker's loop (trainables.trial.Trial: its run opened with run_params and run_tags, one log per epoch,
    the end) with the config the driver would hand it.

    `cells` maps (dataset, method, fraction, seed) keys to their trials: `lr`, `val` (its validation score) and
    optionally `test`, `loss` (validation loss, 0.5), `params` (trainable, 1000 of 100,000), `counts_val` /
    `counts_test` (images per class), `curve` (training loss per epoch), `scores` (the best-so-far validation
    score per epoch; default `val` at every epoch), `searched` (other searched hyperparameters), `predictions` (the per-image predictions artifact's table) and `status` ("running": interrupted before its last epoch). Every cell has `budget` trials planned (default: as many as it has). All on one
    `backbone`; call it again with another to add another backbone's cells to the same sweep."""
    task = get_task("classification")
    keys = list(cells)
    sizes = {len(trials) for trials in cells.values()}
    assert budget is not None or len(sizes) == 1, "cells with different trial counts need a budget"

    def axis(i: int) -> list:
        return list(dict.fromkeys(k[i] for k in keys))

    spec = SweepSpec.model_validate({
        "name": name, "task": task.name, "datasets": [{"name": d} for d in axis(0)],
        "backbones": [{"name": backbone, "weights": "random"}], "methods": axis(1), "fractions": axis(2),
        "seeds": axis(3), "train": {"epochs": EPOCHS, "select_metric": "acc"},
        "search": {"sampler": "random", "trials_per_cell": budget or sizes.pop()},
    })
    planned = [c for c in expand(spec, task.short, load_method_spaces(spec))
               if (c.dataset.key, c.method.key, c.fraction, c.seed) in cells]
    assert len(planned) == len(cells)
    # Artifacts next to the database (MLflow's default is ./mlruns in the working directory).
    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / name).as_uri()
    tracking = mlflow_experiment.prepare(uri, name, artifacts, planned, spec.model_dump_json())
    for cell in planned:
        base = base_config(spec, cell, tracking.for_cell(name, cell))
        trials = cells[(cell.dataset.key, cell.method.key, cell.fraction, cell.seed)]
        for i, t in enumerate(trials):
            searched = {"lr": t["lr"], **t.get("searched", {})}
            fake_trial(with_searched(base, searched, cell.trial_key(i)), t, task)
    return tracking


def fake_trial(config: dict, t: dict, task) -> None:
    """One trial as its rank-0 worker runs it, without data or a model: what they would give is in `t`."""
    cfg = TrialConfig.model_validate(config)
    train = task.train_schema.model_validate(cfg.train)
    selection = task.selection(train)
    method = get_method(cfg.method.name)
    prepared = PreparedModel(model=None, method=method, knobs=resolve_knobs(method, cfg.method.knobs),
                             bn_mode=cfg.method.bn_mode or method.bn_mode,
                             trainable_params=t.get("params", 1000), total_params=100_000)
    data_params = {f"data.counts_{split}": json.dumps(t[f"counts_{split}"]) for split in ("val", "test")
                   if f"counts_{split}" in t}
    trial = Trial(config, cfg, LocalSession())
    params = run_params(cfg, train, prepared, data_params, cfg.backbone.weights, selection)
    assert trial.start(params, run_tags(cfg, data_params), resumed_epoch=0) is Start.TRAIN
    status = t.get("status", Status.FINISHED)
    assert status in (Status.FINISHED, Status.RUNNING), status
    curve = t.get("curve", [])
    scores = t.get("scores", [t["val"]] * EPOCHS)
    assert len(curve) in (0, EPOCHS) and len(scores) == EPOCHS and scores[-1] == t["val"]
    for epoch in range(1, EPOCHS + (status == Status.FINISHED)):
        last = epoch == EPOCHS
        if last and "predictions" in t:
            trial.log_predictions(t["predictions"])
        metrics = {EPOCH: epoch, selection.val: scores[epoch - 1], SCORE: scores[epoch - 1],
                   VAL_BEST_LOSS: t.get("loss", 0.5),
                   **({"train/loss": curve[epoch - 1]} if curve else {}),
                   **({selection.test: t["test"]} if last and "test" in t else {})}
        trial.end_epoch(epoch, metrics, last)


def test_best_in_cell_is_chosen_on_validation_only(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = fake_sweep(uri, "s", {
        ("d", "full", 1.0, 0): [{"lr": 1e-3, "val": 0.90, "test": 0.50}, {"lr": 1e-4, "val": 0.80, "test": 0.95}],
        ("d", "lora", 1.0, 0): [{"lr": 1e-3, "val": 0.85, "test": 0.70, "loss": 0.4},
                                {"lr": 1e-2, "val": 0.85, "test": 0.99, "loss": 0.3}],  # tie on val: lower loss
    })
    result = report.build(uri, "s", tmp_path / "out")
    best = result.trials[result.trials["is_best_in_cell"]].set_index("method")
    assert best.loc["full", "test_acc"] == 0.50 and best.loc["full", "searched.lr"] == 1e-3
    assert best.loc["lora", "test_acc"] == 0.99
    text = (tmp_path / "out" / "report.md").read_text()
    # Both chose the larger of the two learning rates their cell tried: at its edge (‡).
    assert "| full | 50.0‡ |" in text and "**99.0**‡" in text
    tags = {r.data.tags["trial_key"]: r.data.tags["is_best_in_cell"]
            for r in MlflowClient(uri).search_runs([tracking.experiment_id], "tags.role = 'trial'")}
    assert sorted(tags.values()) == ["false", "false", "true", "true"]


def test_a_searched_weight_decay_at_its_edge_is_in_the_edge_table(tmp_path):
    """Weight decay searched beside the learning rate: full's chosen trial has the largest weight decay its cell
    tried (0.01 of 1e-4..0.01), lora's the middle one. Only full is listed, with that knob, and no learning rate at
    an edge (both chose the middle one)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    def trials(best_wd: float) -> list[dict]:
        return [{"lr": lr, "val": 0.9 if (lr, wd) == (1e-3, best_wd) else 0.8, "test": 0.8, "searched": {"weight_decay": wd}}
                for lr, wd in ((1e-4, 1e-4), (1e-3, best_wd), (1e-2, 1e-3), (1e-3, 1e-2 if best_wd != 1e-2 else 1e-4))]
    tracking = fake_sweep(uri, "s", {("d", "full", 1.0, 0): trials(1e-2), ("d", "lora", 1.0, 0): trials(1e-3)})
    result = report.build(uri, "s", tmp_path / "out")
    best = result.trials[result.trials["is_best_in_cell"]].set_index("method")
    assert best.loc["full", "searched.weight_decay"] == 1e-2 and best.loc["lora", "searched.weight_decay"] == 1e-3
    assert best["knobs_at_edge"].to_dict() == {"full": "weight_decay high", "lora": ""}
    assert best["lr_at_edge"].to_dict() == {"full": "", "lora": ""}
    section = (tmp_path / "out" / "report.md").read_text().split("## Learning-rate search")[1].split("\n## ")[0]
    assert "0 of 2 cells ended their search at an edge of the learning rates tried" in section
    assert "1 chose another searched knob at the highest or lowest value tried" in section
    assert "other knobs at an edge" in section and "weight_decay high" in section
    assert "cls/d/bb/full/frac=1/seed=0" in section and "lora" not in section
    tags = {r.data.tags["cell_key"]: r.data.tags["knobs_at_edge"]
            for r in MlflowClient(uri).search_runs([tracking.experiment_id], "tags.role = 'cell'")}
    assert tags == {"cls/d/bb/full/frac=1/seed=0": "weight_decay high", "cls/d/bb/lora/frac=1/seed=0": "no"}


def test_partial_sweep_names_incomplete_cells(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {
        ("d", "full", 1.0, 0): [{"lr": 1e-3, "val": 0.9, "test": 0.8}, {"lr": 1e-4, "val": 0.7, "status": "running"}],
        ("d", "bitfit", 1.0, 0): [{"lr": 1e-3, "val": 0.6, "status": "running"}],
    }, budget=2)
    result = report.build(uri, "s", tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Incomplete cells" in text and "2 of 2 cells have not finished" in text
    assert "cls/d/bb/bitfit/frac=1/seed=0 | 0/2 | no" in text
    assert len(result.trials) == 3


def test_compare_two_sweeps(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "a", {("d", "lora", 1.0, 0): [{"lr": 1e-3, "val": 0.9, "test": 0.80}]})
    fake_sweep(uri, "b", {("d", "lora", 1.0, 0): [{"lr": 1e-3, "val": 0.9, "test": 0.85}]})
    assert report_cli.main(["--compare", "a", "b", "--mlflow-uri", uri, "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare-a-b.md").read_text()
    assert "| d | 1 | lora | 80.0 | 85.0 | +5.0 |" in text
    assert "cannot tell (one seed) | seeds only (no per-image predictions) |" in text


def test_compare_two_sweeps_on_the_same_test_images(tmp_path):
    """Two sweeps (e.g. two backbones) whose trials left predictions on the same 400 test images: b right on 90%
    of them, a on 70%, one seed each: b is better on the images (the interval says seed variation is not in it)."""
    rng = np.random.default_rng(4)
    labels = (rng.random(400) < 0.5).astype(int)
    groups = np.array([""] * 400)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for name, share in (("a", 0.7), ("b", 0.9)):
        right = rng.random(400) < share
        fake_sweep(uri, name, {("d", "lora", 1.0, 0): [{"lr": 1e-3, "val": 0.9, "test": right.mean(),
                                                         "predictions": _predictions(labels, right, groups)}]})
    assert report_cli.main(["--compare", "a", "b", "--mlflow-uri", uri, "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare-a-b.md").read_text()
    assert "| better | test images and seeds |" in text


def test_compare_two_sweeps_of_two_backbones_pairs_each_backbone_with_itself(tmp_path):
    """Sweeps a and b both ran backbones x and y on the same 400 test images (one seed): b is 20 points ahead on x
    and 20 behind on y. Each backbone is compared with the same one of the other sweep: two rows, better and
    worse (pairing on dataset and method alone gave four rows, each pooling both backbones' seeds)."""
    rng = np.random.default_rng(5)
    labels = (rng.random(400) < 0.5).astype(int)
    groups = np.array([""] * 400)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    shares = {("a", "x"): 0.7, ("a", "y"): 0.9, ("b", "x"): 0.9, ("b", "y"): 0.7}
    means = {}
    for (name, backbone), share in shares.items():
        right = rng.random(400) < share
        means[name, backbone] = 100 * right.mean()
        fake_sweep(uri, name, {("d", "lora", 1.0, 0): [{"lr": 1e-3, "val": 0.9, "test": right.mean(),
                                                         "predictions": _predictions(labels, right, groups)}]},
                   backbone=backbone)
    assert report_cli.main(["--compare", "a", "b", "--mlflow-uri", uri, "--out", str(tmp_path / "cmp")]) == 0
    rows = [line for line in (tmp_path / "cmp" / "compare-a-b.md").read_text().splitlines()
            if line.startswith(("| x ", "| y "))]
    assert len(rows) == 2
    for row, backbone, verdict in zip(rows, "xy", ("better", "worse"), strict=True):
        a, b = means["a", backbone], means["b", backbone]
        assert row.startswith(f"| {backbone} | d | 1 | lora | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
        assert f"| {verdict} | test images and seeds |" in row


@needs_shared_data
def test_quickstart_report_files_and_numbers(quickstart, tmp_path):
    storage, _ = quickstart
    assert report_cli.main(["--name", "quickstart", "--storage", str(storage), "--out", str(tmp_path / "r")]) == 0
    out = tmp_path / "r"
    for name in ("results.parquet", "results.csv", "report.md", "report.html",
                 "volume-tf_efficientnet_lite0-breastmnist.png", "pareto-tf_efficientnet_lite0-breastmnist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    raw = pd.read_parquet(out / "results.parquet")
    assert set(COLUMNS) <= set(raw.columns) and len(raw) == 24 and raw["trial_key"].is_unique
    assert raw["is_best_in_cell"].sum() == 8

    # The main table, recomputed from the raw rows: per cell the finished trial with the best validation macro F1
    # (ties: lower validation loss), its test F1.
    finished = raw[raw["status"] == "finished"].sort_values(["score", "val_best_loss"], ascending=[False, True])
    chosen = finished.groupby("cell_key").head(1)
    full_data = chosen[chosen["fraction"] == 1.0].set_index("method")["test_f1"] * 100
    text = (out / "report.md").read_text()
    # The trivial classifier on BreastMNIST's test split (42 malignant, 114 benign/normal), macro F1: guessing in the
    # class proportions scores 1/2, better than always "benign/normal" (F1 2*0.731/1.731 = 0.845 for that class,
    # 0 for the other: 0.422) or uniform guessing (0.472).
    assert "| trivial classifier | 50.0 |" in text
    assert "(did not learn) |" not in text and "## Cells that did not learn" not in text, \
        "a quickstart cell did not beat the trivial classifier"
    for method, value in full_data.items():
        assert re.search(rf"^\| {method} \| \**{value:.1f}\**", text, re.MULTILINE), (method, value)
    gains = full_data - full_data["full"]
    for method, gain in gains.items():
        if method != "full":
            # ... | Δ vs full | BatchNorm stats |
            assert re.search(rf"^\| {method} \|.* \| {re.escape(f'{gain:+.1f}')} \| [a-z,-]+ \|$", text, re.MULTILINE), \
                method
    epochs, exhaustive = int(raw["epochs_run"].sum()), int(raw["max_epochs"].sum())
    assert f"The sweep ran {epochs:,} trial-epochs where an exhaustive search would have run {exhaustive:,}" in text
    assert "## Recommendations" in text and "**" in text.split("## Recommendations")[1]

    # Logged to the sweep's parent run in MLflow, with per-cell summaries on the cell runs.
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    (parent,) = client.search_runs([experiment], "tags.role = 'sweep'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/results.parquet"} <= logged
    cells = client.search_runs([experiment], "tags.role = 'cell'")
    assert all("chosen_lr" in c.data.metrics and c.data.tags["chosen_trial"].startswith(c.data.tags["cell_key"])
               for c in cells)


@needs_shared_data
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_html_report_renders_in_headless_chromium(quickstart, tmp_path):
    storage, _ = quickstart
    report_cli.main(["--name", "quickstart", "--storage", str(storage), "--out", str(tmp_path / "r"), "--format", "html"])
    page = (tmp_path / "r" / "report.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,2400"]
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    # Every figure decoded and shown (the quickstart's report has the data-volume, Pareto and learning-rate plots).
    shown, loaded = (re.search(rf'data-images{suffix}="(\d+)"', dom) for suffix in ("", "-loaded"))
    assert shown and loaded and int(loaded[1]) == int(shown[1]) >= 2, (shown, loaded)
    assert dom.count("<tr>") >= 1 + 4 and "lora_conv" in dom  # the main table's rows
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    ink = (pixels.sum(axis=2) < 600).mean()
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 40).sum()  # matplotlib's first line colour
    assert ink > 0.01, "the screenshot is (nearly) blank"
    assert blue > 200, "no plot lines in the screenshot"


def test_a_baseline_that_did_not_learn_is_marked_and_left_out(tmp_path):
    """Full fine-tuning collapsed to the majority class (73% accuracy on a 57/21 split, the trivial score) on both
    seeds; LoRA learned. The table says so, and no gain over full fine-tuning or recommendation is drawn from it."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    counts = {"counts_val": [21, 57], "counts_test": [42, 114]}
    cells = {}
    for seed in (0, 1):
        cells[("breast", "full", 1.0, seed)] = [{"lr": 1e-3, "val": 57 / 78, "test": 114 / 156, **counts,
                                                 "curve": [0.7, 0.69, 0.69, 0.69]}]
        # Not converged: lora's best validation score rose from 0.80 to 0.88 over its last two epochs (of 4).
        cells[("breast", "lora", 1.0, seed)] = [{"lr": 1e-3, "val": 0.88 + 0.01 * seed, "test": 0.86 + 0.02 * seed,
                                                 **counts, "curve": [0.7, 0.6, 0.55, 0.54],
                                                 "scores": [0.70, 0.80, 0.85, 0.88 + 0.01 * seed]}]
        # Converged: linear's held at 0.86 from epoch 2, though its training loss still fell by a third (the
        # train-loss rule would have marked it; the validation score says longer training would not change it).
        cells[("breast", "linear", 1.0, seed)] = [{"lr": 1e-2, "val": 0.86, "test": 0.84 + 0.01 * seed, **counts,
                                                   "curve": [0.7, 0.5, 0.3, 0.2], "scores": [0.80, 0.86, 0.86, 0.86]}]
    tracking = fake_sweep(uri, "s", cells)
    result = report.build(uri, "s", tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    scores = result.scores.set_index("method")
    assert scores.loc["full", "learned"] is False and scores.loc["lora", "learned"] is True
    assert scores.loc["full", "trivial"] == pytest.approx(100 * 114 / 156)
    assert "## Cells that did not learn" in text and "| bb | breast | 1 | full | 73.1 | 73.1 |" in text
    assert re.search(r"^\| full \| 73\.1 .*\(did not learn\) \|", text, re.MULTILINE)
    assert "linear" not in text.split("## Cells that did not learn")[1].split("##")[0]
    assert "| trivial classifier | 73.1 |" in text
    assert math.isnan(scores.loc["lora", "gain_vs_full"])  # no gain against a baseline that did not learn
    assert "not compared: full did not learn" in text
    recommendations = text.split("## Recommendations")[1]
    assert "**lora**" in recommendations and "Left out, as they did not beat the trivial classifier: full" in recommendations
    assert "not compared with full fine-tuning (full did not learn)" in recommendations
    assert "lora_conv" not in text
    chosen = result.trials[result.trials["is_best_in_cell"]].groupby("method")["not_converged"].agg(set)
    assert chosen.to_dict() == {"full": {False}, "lora": {True}, "linear": {False}}
    assert re.search(r"^\| lora \| [^|]*† \|", text, re.MULTILINE)
    assert not re.search(r"^\| (linear|full) \| [^|]*† \|", text, re.MULTILINE)
    assert "†: not converged, the chosen trial's best validation score still rising" in text
    cell_tags = {r.data.tags["cell_key"]: r.data.tags
                 for r in MlflowClient(uri).search_runs([tracking.experiment_id], "tags.role = 'cell'")}
    assert cell_tags["cls/breast/bb/full/frac=1/seed=0"]["learned"] == "did not learn"
    assert cell_tags["cls/breast/bb/lora/frac=1/seed=1"]["learned"] == "yes"
    assert cell_tags["cls/breast/bb/lora/frac=1/seed=1"]["not_converged"] == "true"
    assert cell_tags["cls/breast/bb/linear/frac=1/seed=1"]["not_converged"] == "false"


def test_without_predictions_comparisons_fall_back_to_seeds_and_one_seed_cannot_tell(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    counts = {"counts_val": [500, 500], "counts_test": [500, 500]}
    full_test, lora_test = [0.80, 0.82, 0.78], [0.84, 0.85, 0.83]
    cells = {("d", m, 1.0, seed): [{"lr": 1e-3, "val": v, "test": v, **counts}]
             for m, values in (("full", full_test), ("lora", lora_test)) for seed, v in enumerate(values)}
    cells |= {("e", m, 1.0, 0): [{"lr": 1e-3, "val": v, "test": v, **counts}] for m, v in (("full", 0.7), ("lora", 0.9))}
    fake_sweep(uri, "s", cells)
    result = report.build(uri, "s", tmp_path / "out")
    paired = result.comparisons[result.comparisons["reference"] == "full"].set_index("dataset")
    differences = 100 * (np.array(lora_test) - np.array(full_test))  # 4, 3, 5 points, seed by seed
    assert paired.loc["d", "mean_diff"] == pytest.approx(differences.mean())
    assert paired.loc["d", "seeds"] == 3 and paired.loc["d", "verdict"] == "better"
    assert paired.loc["d", "basis"].startswith("seeds only") and paired.loc["d", "ahead"] == "3 of 3"
    assert math.isnan(paired.loc["d", "sign_p"])  # 3 seeds: p >= 2 / 2^3, so no test is shown
    assert paired.loc["e", "verdict"] == "cannot tell (one seed)" and paired.loc["e", "seeds"] == 1
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Comparisons" in text and "cannot tell (one seed)" in text
    assert "comparisons fall back to the seeds alone" in text


def _predictions(labels: np.ndarray, right: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """A predictions table of 120 validation images (all right) and the test images: right or wrong as given."""
    from trainables.predictions import predictions_frame

    def probs(y, ok):
        p_true = np.where(ok, 0.8, 0.3)
        p_one = np.where(y == 1, p_true, 1 - p_true)
        return np.column_stack([1 - p_one, p_one])

    val_labels = np.arange(120) % 2
    return pd.concat([predictions_frame("val", np.arange(10_000, 10_120), val_labels,
                                        probs(val_labels, np.ones(120, bool))),
                      predictions_frame("test", np.arange(len(labels)), labels, probs(labels, right), groups)])


def test_comparisons_on_the_test_images_from_the_trials_predictions(tmp_path):
    """Full fine-tuning right on 75% of 400 test images, lora on 90% (each seed its own errors), linear with
    full's very predictions: lora is better, linear equivalent, and the report reads the predictions once."""
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.4).astype(int)
    groups = np.repeat([f"p{i}" for i in range(200)], 2)  # two images per patient
    counts = {"counts_val": [60, 60], "counts_test": np.bincount(labels).tolist()}
    cells = {}
    for seed in range(3):
        full_right = rng.random(400) < 0.75
        for method, right in (("full", full_right), ("lora", rng.random(400) < 0.9), ("linear", full_right)):
            cells[("d", method, 1.0, seed)] = [{"lr": 1e-3, "val": 1.0 - 0.01 * (method == "linear"),
                                                "test": right.mean(), **counts,
                                                "predictions": _predictions(labels, right, groups)}]
    fake_sweep(uri := f"sqlite:///{tmp_path / 'm.db'}", "s", cells)
    result = report.build(uri, "s", tmp_path / "out")
    compared = result.comparisons.set_index(["method", "reference"])
    lora = compared.loc[("lora", "full")]
    assert lora["basis"] == "test images and seeds" and lora["images"] == 400 and lora["verdict"] == "better"
    expected = 100 * np.mean([c[0]["test"] for k, c in cells.items() if k[1] == "lora"]) - 100 * np.mean(
        [c[0]["test"] for k, c in cells.items() if k[1] == "full"])  # accuracy: the mean of the seeds' scores
    assert lora["mean_diff"] == pytest.approx(expected) and lora["ci_low"] < expected < lora["ci_high"]
    assert lora["ahead"] == "3 of 3" and lora["p_better"] > 0.99
    linear = compared.loc[("linear", "full")]
    assert linear["verdict"] == "equivalent" and linear["mean_diff"] == 0.0
    assert "best against runner-up" in compared.loc[("lora", "full"), "kind"]  # lora first, full (= linear) next
    cached = sorted((tmp_path / "out" / "predictions").glob("*.parquet"))
    assert len(cached) == 9
    text = (tmp_path / "out" / "report.md").read_text()
    assert "paired bootstrap over the test images" in text and "fall back" not in text
