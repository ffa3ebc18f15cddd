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
              "--set", "datasets=[{name: medmnist, options: {subset: breastmnist, download: false}}]")
    assert "breastmnist" in err and "not found" in err and "--data-root" in err


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
    assert "8 cells, 24 trials" in out and "cls/breastmnist/tf_efficientnet_lite0/lora_conv/frac=0.25/seed=0" in out
    assert "trial-epochs" in out


@needs_shared_data
def test_dry_run_with_synchronous_halving_counts_its_epochs_and_warns_about_tpe(capsys, tmp_path):
    code = main(["--storage", str(tmp_path / "store"), "--dry-run", "--data-root", str(SHARED_DATA),
                 "--set", "scheduler.type=halving", "--set", "search.sampler=tpe"])
    out = capsys.readouterr().out
    # 8 cells of 3 trials, 4 epochs, rungs at 1 and 2 (reduction 2): 3 + 2 + 1 + 1 = 7 trial-epochs per cell.
    assert code == 0 and "at most 96 trial-epochs; 56 with synchronous halving (rungs at epochs 1, 2)" in out
    assert "TPE learns nothing" in out
