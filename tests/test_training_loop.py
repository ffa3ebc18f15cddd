"""The classification loop run without Ray (LocalSession): reports, resume equivalence, divergence, MLflow identity."""

from __future__ import annotations

import math

import pytest

from tests.conftest import StoppingSession, mlflow_experiment, run_worker
from trainables.classification import train_loop_per_worker
from trainables.config import DataConfig
from trainables.data import Batches, load_splits
from trainables.data.loader import batch_count, passes_per_epoch
from trainables.mlflow_run import config_hash
from trainables.session import LocalSession


def trial_config(tmp_path=None, storage=None, train_images: int = 120, **train) -> dict:
    config = {
        "storage": str(storage) if storage else None,
        "task": "classification",
        "seed": 0,
        "data": {"name": "synthetic", "options": {"train": train_images, "val": 40, "test": 40}, "image_size": 32},
        "backbone": {"name": "test_efficientnet", "weights": "random"},
        "method": {"name": "bitfit"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.5, **train},
        "tracking": {"sweep": "t", "cell_key": "cls/synthetic/test_efficientnet/bitfit/frac=1/seed=0",
                     "trial_key": "cls/synthetic/test_efficientnet/bitfit/frac=1/seed=0/trial=0"},
    }
    return mlflow_experiment(config, tmp_path) if tmp_path is not None else config


def run(config, session=None) -> LocalSession:
    return run_worker(train_loop_per_worker, config, session)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> LocalSession:
    return run(trial_config(storage=tmp_path_factory.mktemp("uninterrupted")))


def test_reports_every_epoch_and_tests_best_weights_in_the_last(uninterrupted):
    reports = uninterrupted.reports
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    # Macro F1 is the default selection metric (the study's); the others are reported beside it.
    assert all("val/f1" in r and "val/best_f1" in r and "val/acc" in r and "train/loss" in r for r in reports)
    assert all(not any(k.startswith("test/") for k in r) for r in reports[:-1])
    assert {"test/f1", "test/acc", "test/auroc", "test/balanced_acc", "test/mcc", "test/loss"} <= set(reports[-1])
    assert reports[-1]["val/best_f1"] == max(r["val/f1"] for r in reports) == reports[-1]["score"]


def test_micro_batches_accumulate_to_the_gradients_of_the_whole_batch(uninterrupted):
    """16 images per step as 4 + 4 + 4 + 4 (BatchNorm statistics frozen, as bitfit keeps them): the same run."""
    accumulated = run(trial_config(micro_batch_size=4))
    for ours, theirs in zip(accumulated.reports, uninterrupted.reports, strict=True):
        assert ours["train/accumulation_steps"] == 4 and theirs["train/accumulation_steps"] == 1
        for key in ("train/loss", "val/loss", "val/f1"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


# A tiny training set cycled several times an epoch (min_steps_per_epoch): 24 images in batches of 16 are 2 steps
# a pass, so 5 steps take 3 passes. Each pass's shuffle and augmentation must survive a resume too.
CYCLED = {"train_images": 24, "min_steps_per_epoch": 5}


@pytest.mark.parametrize("options", [{}, CYCLED], ids=["one-pass", "cycled"])
def test_resume_from_a_mid_training_checkpoint_gives_the_uninterrupted_result(uninterrupted, tmp_path, options):
    if options:
        uninterrupted = run(trial_config(storage=tmp_path / "uninterrupted", **options))
    first = run(trial_config(storage=tmp_path, **options), StoppingSession(stop_after_reports=1))
    assert len(first.reports) == 1
    assert list((tmp_path / "checkpoints").glob("*/epoch_000001/trained.safetensors"))
    resumed = run(trial_config(storage=tmp_path, **options))
    # The checkpointed epoch is reported again first (the driver may not have heard it before the interruption:
    # a halving rung there would otherwise be decided without it), exactly as the first attempt reported it.
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]
    assert resumed.reports[0] == first.reports[0]
    for ours, theirs in zip(resumed.reports[1:], uninterrupted.reports[1:], strict=True):
        for key in ("train/loss", "val/acc", "val/loss", "test/acc"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key


@pytest.mark.parametrize(("images", "batch", "min_last", "workers", "batches"), [
    (24, 16, 2, 1, 2),  # 16 + 8
    (17, 16, 2, 1, 1),  # 16 + 1: the one image joins the first batch
    (17, 16, 1, 1, 2),  # ... unless single-image batches are allowed
    (300, 32, 2, 1, 10),  # 9 x 32 + 12
    (25, 8, 2, 2, 2),  # each of 2 workers: a padded shard of 13 = 8 + 5
    (0, 16, 2, 1, 0),
])
def test_batches_per_pass_follow_the_min_last_rule(images, batch, min_last, workers, batches):
    assert batch_count(images, batch, min_last, workers) == batches
    if workers == 1 and images:  # what Batches itself runs over such a split
        split = load_splits(DataConfig(name="synthetic", image_size=8, options={"train": images, "val": 3, "test": 3,
                                                                                 "num_classes": 2}), seed=0).train
        assert len(split) == images
        assert sum(1 for _ in Batches(split, batch, (0.5,) * 3, (0.5,) * 3, shuffle=True, min_last=min_last)) == batches


@pytest.mark.parametrize(("batches", "min_steps", "passes"), [
    (2, 1, 1), (2, 2, 1), (2, 3, 2), (2, 6, 3), (2, 7, 4), (1, 6, 6), (10, 6, 1), (0, 6, 1),
])
def test_passes_per_epoch_are_whole_passes_reaching_the_minimum(batches, min_steps, passes):
    assert passes_per_epoch(batches, min_steps) == passes


@pytest.fixture
def loader_passes(monkeypatch) -> list[int]:
    """The pass numbers (Batches.epoch, which seeds shuffle and augmentation) the training batches are run at."""
    passes: list[int] = []
    iterate = Batches.__iter__

    def numbered(self):
        if self.shuffle:
            passes.append(self.epoch)
        return iterate(self)

    monkeypatch.setattr(Batches, "__iter__", numbered)
    return passes


def test_a_cycled_epoch_runs_every_pass_with_its_own_shuffle_and_schedules_all_its_steps(monkeypatch, loader_passes):
    """24 images, batch 16 (2 steps a pass), min_steps_per_epoch 5: 3 passes, 6 steps an epoch, 18 in 3 epochs,
    passes numbered 1..9 across the epochs for the loader's seeds. Without warm-up the cosine after epoch 1 is at
    0.5 (1 + cos(pi 6/18)) = 0.75 of the learning rate (it would be at 0 if it counted 2 steps an epoch). The
    run's params (what MLflow logs) record the knob and the passes it made."""
    from trainables import classification

    session, steps = LocalSession(), []
    step = classification.accumulate

    def counted(net, x, y, *args, **kwargs):
        steps.append((len(session.reports) + 1, len(y)))
        return step(net, x, y, *args, **kwargs)

    monkeypatch.setattr(classification, "accumulate", counted)
    params, params_of = [], classification.run_params

    def recorded(*args, **kwargs):
        params.append(params_of(*args, **kwargs))
        return params[-1]

    monkeypatch.setattr(classification, "run_params", recorded)
    run(trial_config(warmup_epochs=0.0, **CYCLED), session)
    assert [sum(1 for e, _ in steps if e == epoch) for epoch in (1, 2, 3)] == [6, 6, 6]
    assert [n for _, n in steps[:6]] == [16, 8] * 3  # whole passes over the 24 images
    assert loader_passes == list(range(1, 10))
    assert session.reports[0]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert params[0]["train.min_steps_per_epoch"] == 5 and params[0]["train.passes_per_epoch"] == 3


def test_one_pass_an_epoch_numbers_the_loader_as_the_epochs(loader_passes):
    """An epoch that already has the steps asked for (2 here) is one pass, shuffled as before the knob existed
    (pass number = epoch, as every run with the default min_steps_per_epoch 1)."""
    session = run(trial_config(epochs=2, train_images=24, min_steps_per_epoch=2))
    assert loader_passes == [1, 2] and len(session.reports) == 2


def test_diverging_loss_ends_the_trial_as_failed():
    session = run(trial_config(lr=1e6, grad_clip=None, optimizer="sgd"))
    last = session.reports[-1]
    assert last["failed"] == 1 and "loss became" in last["failure_reason"]


def test_mlflow_run_identity_append_replay_and_replace(tmp_path):
    from mlflow import MlflowClient

    config = trial_config(tmp_path, storage=tmp_path)
    client = MlflowClient(config["tracking"]["uri"])
    experiment = config["tracking"]["experiment_id"]

    def trial_runs():
        return client.search_runs([experiment], "tags.role = 'trial'")

    # Interrupted after one epoch, then resumed from its checkpoint: one run, each epoch logged once.
    run(config, StoppingSession(stop_after_reports=1))
    run(config)
    (only,) = trial_runs()
    assert only.data.tags["status"] == "finished" and only.data.tags["config_hash"] == config_hash(config)
    assert [m.step for m in client.get_metric_history(only.info.run_id, "epoch")] == [1, 2, 3]
    assert only.data.params["method"] == "bitfit" and int(only.data.params["trainable_params"]) > 0
    assert only.data.tags["trial_key"] == config["tracking"]["trial_key"]

    # The same finished trial started again from scratch (its driver died before recording it): replayed.
    replayed = run(config)
    assert [r["epoch"] for r in replayed.reports] == [1, 2, 3]
    assert replayed.reports[-1]["test/acc"] == only.data.metrics["test/acc"]
    assert len(trial_runs()) == 1

    # Same key, different config (a re-suggested trial of a lost timeline): the stale run is replaced.
    changed = trial_config(storage=tmp_path, lr=1e-3)
    changed["tracking"] = config["tracking"]
    run(changed, StoppingSession(stop_after_reports=1))
    (new,) = trial_runs()
    assert new.info.run_id != only.info.run_id and math.isclose(float(new.data.params["train.lr"]), 1e-3)


def test_a_finished_trial_leaves_its_per_image_predictions(tmp_path):
    """The contract's predictions artifact: one row per image of the validation and test splits (40 each in this
    synthetic dataset), probabilities summing to 1, and the test F1 recomputed from it (scikit-learn, on the argmax)
    equal to the logged test/f1."""
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.metrics import accuracy_score, f1_score

    from trainables.contract import PREDICTIONS_ARTIFACT

    config = trial_config(tmp_path, epochs=1)
    run(config)
    client = MlflowClient(config["tracking"]["uri"])
    (only,) = client.search_runs([config["tracking"]["experiment_id"]], "tags.role = 'trial'")
    frame = pd.read_parquet(client.download_artifacts(only.info.run_id, PREDICTIONS_ARTIFACT, str(tmp_path)))
    assert frame.groupby("split").size().to_dict() == {"val": 40, "test": 40}
    test = frame[frame["split"] == "test"]
    assert test["row"].is_unique and set(test["row"]).isdisjoint(frame[frame["split"] == "val"]["row"])
    probs = test[["prob_0", "prob_1"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
    assert f1_score(test["label"], probs.argmax(1), average="macro") == pytest.approx(only.data.metrics["test/f1"])
    assert accuracy_score(test["label"], probs.argmax(1)) == pytest.approx(only.data.metrics["test/acc"])


def test_an_attempt_that_died_after_its_last_checkpoint_reports_again_without_training(tmp_path):
    from mlflow import MlflowClient

    class DriverGoneAtTheEnd(LocalSession):
        def report(self, metrics):
            super().report(metrics)
            if metrics["epoch"] == 3:
                raise ConnectionError("the driver went away")

    config = trial_config(tmp_path, storage=tmp_path)
    client = MlflowClient(config["tracking"]["uri"])
    first = DriverGoneAtTheEnd()
    with pytest.raises(ConnectionError):
        run(config, first)
    (trial_run,) = client.search_runs([config["tracking"]["experiment_id"]], "tags.role = 'trial'")
    assert trial_run.data.tags["status"] == "finished"  # the final report failed, not the trial
    # The run no longer says finished (its record was lost), so the trial is retried with every epoch trained.
    client.set_tag(trial_run.info.run_id, "status", "failed")
    client.set_tag(trial_run.info.run_id, "failure_kind", "error")
    again = run(config)
    assert len(again.reports) == 1 and again.reports[0]["replayed"] == 1
    assert again.reports[0]["epoch"] == 3 and again.reports[0]["test/acc"] == first.reports[-1]["test/acc"]
    assert client.get_run(trial_run.info.run_id).data.tags["status"] == "finished"
    assert [m.step for m in client.get_metric_history(trial_run.info.run_id, "epoch")] == [1, 2, 3]


def test_a_run_stopped_before_it_logged_an_epoch_is_trained_not_replayed(tmp_path):
    from mlflow import MlflowClient

    config = trial_config(tmp_path)
    tracking = config["tracking"]
    client = MlflowClient(tracking["uri"])
    # The driver marks a trial it stops while paused; an attempt that had only opened its run leaves nothing.
    client.create_run(tracking["experiment_id"], tags={
        "trial_key": tracking["trial_key"], "role": "trial", "config_hash": config_hash(config),
        "status": "stopped_early"})
    assert [r["epoch"] for r in run(config).reports] == [1, 2, 3]


def test_a_trial_that_ends_without_reporting_fails_instead_of_failing_the_sweep(monkeypatch):
    import trainables.trainable as launch

    monkeypatch.setattr(launch, "get_task", lambda name: type("Task", (), {"worker": staticmethod(lambda c: None)}))
    with pytest.raises(RuntimeError, match="k/trial=0 ended without reporting any epoch"):
        launch.run_trial({"task": "x", "resources": {"num_workers": 1}, "tracking": {"trial_key": "k/trial=0"}})


def test_a_checkpoint_stands_when_storage_fails_while_older_ones_are_removed(tmp_path):
    from trainables.checkpoints import CheckpointStore

    class DeletesFail:  # the storage stops answering right after LATEST was written
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def delete_dir(self, path):
            raise OSError("When deleting: connection refused")

    store = CheckpointStore(str(tmp_path), "cell/trial=0", "digest")
    for epoch in (1, 2):
        (tmp_path / f"src{epoch}").mkdir()
        (tmp_path / f"src{epoch}" / "weights").write_text(str(epoch))
    store.save(tmp_path / "src1", 1)
    store.fs = DeletesFail(store.fs)
    store.save(tmp_path / "src2", 2)
    with store.latest() as checkpoint:
        assert (checkpoint / "weights").read_text() == "2"


def test_start_says_whether_the_attempt_trains_and_why_not(tmp_path):
    """Trial.start's answer, on a trial of two epochs driven by hand (no data, no model, tracking off): a fresh
    trial trains; the same trial again, its end recorded nowhere but in its last checkpoint, does not: the final
    report is given back from the checkpoint. (An ended MLflow run is replayed instead, Start.REPLAYED: see
    test_resume_from_a_mid_training_checkpoint_gives_the_uninterrupted_result.) A truth test of the answer is
    refused (a bool once meant the opposite)."""
    from trainables.config import TrialConfig
    from trainables.trial import Start, Trial

    config = trial_config(storage=tmp_path)
    cfg = TrialConfig.model_validate(config)

    def attempt() -> tuple[Start, LocalSession]:
        session = LocalSession()
        trial = Trial(config, cfg, session)
        with trial.latest_checkpoint() as checkpoint:  # the loop's own state: here, the epoch it holds
            resumed = int((checkpoint / "epoch").read_text()) if checkpoint else 0
        started = trial.start({}, {}, resumed)
        if started.trains:
            for epoch in range(resumed + 1, 3):
                trial.end_epoch(epoch, {"epoch": epoch, "score": epoch / 10}, last=epoch == 2,
                                save=lambda directory, epoch=epoch: (directory / "epoch").write_text(str(epoch)))
        return started, session

    first, trained = attempt()
    assert first is Start.TRAIN and [r["epoch"] for r in trained.reports] == [1, 2]
    again, final = attempt()
    assert again is Start.FINAL_FROM_CHECKPOINT
    assert [(r["epoch"], r["score"], r["replayed"]) for r in final.reports] == [(2, 0.2, 1)]
    with pytest.raises(TypeError, match=r"test its \.trains"):
        bool(again)
