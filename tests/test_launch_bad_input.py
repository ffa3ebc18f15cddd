"""Bad input exits with code 2, a message naming the problem, and nothing created."""

from __future__ import annotations

from pathlib import Path

from sweep.launch import main
from tests.conftest import SHARED_DATA, needs_shared_data

TINY = ["--set", "backbones=[{name: test_resnet, weights: random}]", "--set", "image_size=32"]


def bad(capsys, tmp_path: Path, *args: str) -> str:
    storage = tmp_path / "store"
    code = main(["--storage", str(storage), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not storage.exists(), "bad input must not create the storage"
    return err


def test_unknown_method(capsys, tmp_path):
    err = bad(capsys, tmp_path, *TINY, "--set", "methods=[linear, lora_everything]")
    assert "unknown method 'lora_everything'" in err


def test_unknown_dataset(capsys, tmp_path):
    err = bad(capsys, tmp_path, *TINY, "--set", "datasets=[{name: chestct3000}]")
    assert "unknown dataset 'chestct3000'" in err


def test_method_that_does_not_fit_the_backbone(capsys, tmp_path):
    err = bad(capsys, tmp_path, "--set", "backbones=[{name: test_vit, weights: random}]", "--set", "image_size=32",
              "--set", "methods=[lora_conv]")
    assert "'lora_conv' does not fit backbone 'test_vit'" in err and "cnn" in err


def test_lr_range_low_not_below_high(capsys, tmp_path):
    err = bad(capsys, tmp_path, *TINY, "--set", "search.spaces={linear: {lr: {low: 0.1, high: 0.01}}}")
    assert "low (0.1) must be smaller than high (0.01)" in err


def test_missing_data_root(capsys, tmp_path):
    err = bad(capsys, tmp_path, *TINY, "--data-root", str(tmp_path / "no-such-dir"),
              "--set", "datasets=[{name: medmnist, options: {subset: dermamnist, download: false}}]")
    assert "dermamnist" in err and "not found" in err and "--data-root" in err


def test_bad_spec_file_and_unknown_key(capsys, tmp_path):
    err = bad(capsys, tmp_path, "--config", str(tmp_path / "missing.yaml"))
    assert "does not exist" in err
    err = bad(capsys, tmp_path, "--set", "trian.epochs=3")
    assert "trian" in err


def test_existing_sweep_name_without_resume_is_refused(capsys, tmp_path):
    storage = tmp_path / "store"
    (storage / "quickstart").mkdir(parents=True)
    (storage / "quickstart" / "tuner.pkl").write_bytes(b"x")
    code = main(["--storage", str(storage), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--resume" in err
    assert sorted(p.name for p in storage.rglob("*")) == ["quickstart", "tuner.pkl"]  # untouched


def test_resume_of_a_sweep_that_does_not_exist(capsys, tmp_path):
    err = bad(capsys, tmp_path, "--resume")
    assert "no sweep 'quickstart'" in err


def test_unwritable_storage(capsys):
    code = main(["--storage", "/proc/medpeft-results", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err


@needs_shared_data
def test_dry_run_prints_the_grid_and_creates_nothing(capsys, tmp_path):
    storage = tmp_path / "store"
    code = main(["--storage", str(storage), "--dry-run", "--data-root", str(SHARED_DATA)])
    out = capsys.readouterr().out
    assert code == 0 and not storage.exists()
    assert "8 cells, 24 trials" in out and "cls/breastmnist/tf_efficientnet_lite0/lora_conv/frac=0.5/seed=0" in out
    assert "trial-epochs" in out


@needs_shared_data
def test_dry_run_with_synchronous_halving_counts_its_epochs_and_warns_about_tpe(capsys, tmp_path):
    code = main(["--storage", str(tmp_path / "store"), "--dry-run", "--data-root", str(SHARED_DATA),
                 "--set", "scheduler.type=halving", "--set", "search.sampler=tpe"])
    out = capsys.readouterr().out
    # 8 cells of 3 trials, 6 epochs, one rung at 2 (reduction 3): 3 x 2 + 1 x 4 = 10 trial-epochs per cell.
    assert code == 0 and "at most 144 trial-epochs; 80 with synchronous halving (rungs at epochs 2)" in out
    assert "TPE learns nothing" in out


def test_a_gpu_request_this_machine_cannot_satisfy(capsys, tmp_path):
    """A local Ray cannot add nodes: two GPUs per trial on a machine with none would wait forever."""
    err = bad(capsys, tmp_path, *TINY, "--set", "resources={gpus_per_trial: 2, num_gpus: 0}")
    assert "need 1 CPUs and 2 GPUs per worker" in err and "offers" in err and "0 GPUs" in err
    err = bad(capsys, tmp_path, *TINY, "--set", "resources={cpus_per_trial: 64, num_cpus: 2}")
    assert "64 CPUs" in err and "2 CPUs" in err


def test_a_dataset_with_one_class_or_a_class_missing_from_a_split(capsys, tmp_path):
    folder = tmp_path / "one-class"
    from tests.dataset_layouts import write_image

    for i in range(12):
        write_image(folder / "benign" / f"{i}.png", i)
    err = bad(capsys, tmp_path, *TINY, "--set", f"datasets=[{{name: imagefolder, root: {folder}}}]")
    assert "has 1 class (benign)" in err and "two or more" in err
    for i in range(2):  # a second class, too small to reach every split
        write_image(folder / "malignant" / f"{i}.png", 100 + i)
    err = bad(capsys, tmp_path, *TINY, "--set", f"datasets=[{{name: imagefolder, root: {folder}}}]")
    assert "has no images of class(es) malignant" in err and "train, val and test" in err


def test_a_tracking_uri_mlflow_cannot_open(capsys, tmp_path):
    err = bad(capsys, tmp_path, *TINY, "--mlflow-uri", "foo://bar")
    assert "cannot track to 'foo' URIs" in err and "sqlite:///" in err and "http://HOST:PORT" in err
    err = bad(capsys, tmp_path, *TINY, "--mlflow-uri", "http://127.0.0.1:9")  # nothing listens there
    assert "no MLflow tracking server answers" in err
