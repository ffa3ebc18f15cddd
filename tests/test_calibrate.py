"""`python -m sweep.calibrate` (and `sweep.launch --dry-run --calibrate`) on tiny models on the CPU: every group
measured once and cached, the estimate recomputed from its parts under synchronous halving's exact cost, GPU
shares from measured memory, and bad input refused before any measurement."""

from __future__ import annotations

import json
import math

import pytest

from sweep import calibrate
from sweep.launch import main as launch_main
from sweep.plan import cost
from sweep.plan.spec import SpecError, load_spec
from sweep.plan.validate import make_plan

SPEC = """
name: calib
task: classification
datasets: [{name: synthetic, id: synth, options: {train: 90, val: 30, test: 30, num_classes: 3}}]
backbones:
  - {name: test_resnet, weights: random, methods: [linear, ssf]}
  - {name: test_vit, weights: random, methods: [linear, lora]}
fractions: [1.0, 0.5]
image_size: 32
train: {epochs: 6, batch_size: 8}
search: {sampler: grid, trials_per_cell: 3}
scheduler: {type: halving, grace_period: 2, reduction_factor: 3}
resources: {cpus_per_trial: 1}
"""


@pytest.fixture
def spec_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "calib.yaml"
    path.write_text(SPEC)
    return path


def test_every_group_is_measured_once_and_the_estimate_is_the_sum_of_its_parts(spec_file, tmp_path, monkeypatch):
    out = tmp_path / "calibration.json"
    assert calibrate.main(["--config", str(spec_file), "--steps", "1", "--price-per-hour", "2",
                           "--spot-price-per-hour", "0.5", "--calibration-json", str(out)]) == 0
    report = json.loads(out.read_text())["calib"]
    groups = {tuple(json.loads(k)[i] for i in (1, 4)): v for k, v in report["groups"].items()}
    assert set(groups) == {("test_resnet", "linear"), ("test_resnet", "ssf"), ("test_vit", "linear"),
                           ("test_vit", "lora")}  # 8 cells, 4 groups: each fraction shares its group's measurement
    assert all(g["train_images_per_s"] > 0 and g["peak_memory_mb"] > 0 and g["checkpoint_mb"] > 0
               for g in groups.values())
    # Recomputed from the measurements: 90 / 30 images, 3 trials, 6 epochs, one rung at 2 (eta 3): 3x2 + 1x4.
    halving, exhaustive = 3 * 2 + 1 * 4, 3 * 6
    total = 0.0
    for cell in report["cells"]:
        g = report["groups"][cell["group"]]
        fraction = 0.5 if "frac=0.5" in cell["cell"] else 1.0
        epoch_s = fraction * 90 / g["train_images_per_s"] + 30 / g["eval_images_per_s"]
        assert cell["epoch_s"] == pytest.approx(epoch_s)
        assert (cell["trial_epochs_halving"], cell["trial_epochs_exhaustive"]) == (halving, exhaustive)
        assert cell["device_hours_halving"] == pytest.approx(epoch_s * halving / 3600)  # one CPU per trial
        total += cell["device_hours_halving"]
    assert sum(g["device_hours_halving"] for g in report["groups"].values()) == pytest.approx(total)
    totals = report["totals"]
    assert totals["device_hours_halving"] == pytest.approx(total)
    assert totals["trial_epochs_halving"] == 8 * halving and totals["trial_epochs_exhaustive"] == 8 * exhaustive
    assert totals["cost_on_demand_halving"] == pytest.approx(2 * total)
    assert totals["cost_spot_exhaustive"] == pytest.approx(0.5 * totals["device_hours_exhaustive"])

    # A second run on the same device type reads every group from the cache: nothing is measured again.
    monkeypatch.setattr("trainables.calibrate.measure", lambda *a, **k: pytest.fail("measured again"))
    assert calibrate.main(["--config", str(spec_file), "--calibration-json", str(out)]) == 0
    assert all(g["reused"] for g in json.loads(out.read_text())["calib"]["groups"].values())


def test_launch_dry_run_calibrate(spec_file, capsys, monkeypatch):
    assert launch_main(["--config", str(spec_file), "--dry-run", "--calibrate", "--steps", "1",
                        "--storage", str(spec_file.parent / "store")]) == 0
    out = capsys.readouterr().out
    assert "Sweep 'calib'" in out and "Calibration of 'calib'" in out and "device-hours" in out
    assert "test_vit/lora 32px b8" in out and not (spec_file.parent / "store").exists()


def test_auto_gpu_shares_follow_the_measured_memory(spec_file, tmp_path):
    spec = load_spec(spec_file, ["resources={gpus_per_trial: auto, gpu_type: Test GPU 16GB, num_gpus: 1}"])
    with pytest.raises(SpecError, match="no calibration on 'Test GPU 16GB'"):
        make_plan(spec, spec_file, None)
    # A calibration of that GPU type, as `python -m sweep.calibrate` on it would have cached.
    memory = {"linear": 900.0, "ssf": 3000.0, "lora": 7000.0}
    plan = make_plan(load_spec(spec_file), spec_file, None)
    measured = {cost.group_of(plan.spec, c).key: {"peak_memory_mb": memory[c.method.name],
                                                       "device_memory_mb": 16384.0} for c in plan.cells}
    cost.write_cache("Test GPU 16GB", measured)
    plan = make_plan(spec, spec_file, None)
    for cell in plan.cells:
        expected = math.ceil(100 * memory[cell.method.name] * 1.2 / 16384) / 100  # peak + 20% of a 16 GB card
        assert cell.resources.gpus == expected
    assert {c.resources.gpus for c in plan.cells} == {0.07, 0.22, 0.52}
    assert any("GPU share per trial from its calibrated memory" in n for n in plan.notes)


def test_bad_input_is_refused_before_any_measurement(spec_file, capsys, monkeypatch):
    monkeypatch.setattr("trainables.calibrate.measure", lambda *a, **k: pytest.fail("measured despite bad input"))
    assert calibrate.main(["--config", str(spec_file), "--price-per-hour", "cheap"]) == 2
    assert "--price-per-hour 'cheap' is not a number" in capsys.readouterr().err
    assert calibrate.main(["--config", str(spec_file), "--images", "synth"]) == 2
    assert "expected DATASET_ID=TRAIN_IMAGES" in capsys.readouterr().err
    assert calibrate.main(["--config", str(spec_file), "--set", "methods=[linear]", "--set",
                           "backbones=[{name: resnet_without_such_model, weights: random}]"]) == 2
    assert "backbone 'resnet_without_such_model' cannot be built" in capsys.readouterr().err


def test_the_worst_case_counts_every_search_round_and_added_seed(tmp_path, monkeypatch):
    """8 cells x (3 trials to a rung at 2 of 6 epochs, one on to 6): 80 trial-epochs planned. Without range
    extension, each cell's choice may run once more at 12 epochs (96 more), and every comparison may double its
    seeds (1 -> 2): (80 + 96) x 2 = 352 trial-epochs, at the planned cost per trial-epoch."""
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "calib.yaml"
    path.write_text(SPEC.replace("search: {sampler: grid, trials_per_cell: 3}",
                                 "search: {sampler: grid, trials_per_cell: 3, extend: false, max_epoch_doublings: 1}\n"
                                 "seeds: {initial: 1, max: 2}"))
    plan = make_plan(load_spec(path), path, None, allow_missing=True)
    measured = type("Calibration", (), {"totals": {"trial_epochs_halving": 80, "device_hours_halving": 0.5}})()
    line = calibrate.render_worst_case(plan, measured)
    assert "352 trial-epochs" in line and f"{0.5 * 352 / 80:.2f} device-hours" in line


def test_a_capped_training_set_is_estimated_at_its_cap(tmp_path, monkeypatch):
    """`max_train_images` is what a trial trains on (trainables/data/prepare.py), so the estimate counts the cap,
    not the split: 90 training images capped at 40, validation untouched."""
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "capped.yaml"
    path.write_text(SPEC.replace("num_classes: 3}}", "num_classes: 3}, max_train_images: 40}"))
    plan = make_plan(load_spec(path), path, None, allow_missing=True)
    assert cost.dataset_sizes(plan, {}) == {plan.cells[0].dataset.key: {"train": 40, "val": 30, "test": 30}}
