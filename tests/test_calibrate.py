"""`python -m sweep.calibrate` (and `sweep.launch --dry-run --calibrate`) on tiny models on the CPU: every group
measured once and cached, the estimate recomputed from its parts under synchronous halving's exact cost (steps and
overheads, numbers worked out by hand from sweep/plan/cost.py's formula), GPU shares from measured memory, the
overheads fitted from a timeline, a finished sweep's cost read back, and bad input refused before any
measurement."""

from __future__ import annotations

import json
import math
import os

import pytest

from sweep import calibrate
from sweep.errors import CalibrationError
from sweep.launch import main as launch_main
from sweep.plan import cost, overheads, speed
from sweep.plan.spec import SpecError
from sweep.plan.validate import make_plan
from tests.conftest import load_spec

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
resources: {cpus_per_trial: 1, num_cpus: 1}
"""


# The machine's overheads as measured constants (the harness sweep is not run by these tests; its fit is tested
# on a timeline below).
OVERHEADS = {"trial_s": 1.0, "pause_s": 3.0, "epoch_s": 0.5, "sweep_s": 20.0, "import_s": 6.0}


@pytest.fixture
def spec_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cost, "measure_overheads", lambda *a, **k: dict(OVERHEADS))
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
               and g["build_s"] > 0 and g["checkpoint_save_s"] > 0 and g["checkpoint_load_s"] > 0
               and g["threads"] == 1 for g in groups.values())  # one CPU per trial: one thread
    # Recomputed from the measurements: 90 / 30 images, 3 trials, 6 epochs, one rung at 2 (eta 3): 3x2 + 1x4.
    halving, exhaustive = 3 * 2 + 1 * 4, 3 * 6
    total = 0.0
    for cell in report["cells"]:
        g = report["groups"][cell["group"]]
        fraction = 0.5 if "frac=0.5" in cell["cell"] else 1.0
        epoch_s = fraction * 90 / g["train_images_per_s"] + 30 / g["eval_images_per_s"]
        assert cell["epoch_s"] == pytest.approx(epoch_s)
        assert (cell["trial_epochs_halving"], cell["trial_epochs_exhaustive"]) == (halving, exhaustive)
        # The steps' part (one CPU per trial); the rest is overheads (checked by hand in the next test).
        steps = cell["device_hours_halving"] - cell["overhead_hours_halving"]
        assert steps == pytest.approx(epoch_s * halving / 3600)
        total += cell["device_hours_halving"]
    assert sum(g["device_hours_halving"] for g in report["groups"].values()) == pytest.approx(total)
    totals = report["totals"]
    imports = OVERHEADS["import_s"] * totals["slots"] / 3600  # each slot's actor imports once (one CPU each)
    assert totals["device_hours_halving"] == pytest.approx(total + imports)
    total += imports
    assert totals["trial_epochs_halving"] == 8 * halving and totals["trial_epochs_exhaustive"] == 8 * exhaustive
    assert totals["cost_on_demand_halving"] == pytest.approx(2 * total)
    assert totals["cost_spot_exhaustive"] == pytest.approx(0.5 * totals["device_hours_exhaustive"])

    # A second run on the same device type reads every group from the cache: nothing is measured again.
    monkeypatch.setattr("trainables.throughput.measure", lambda *a, **k: pytest.fail("measured again"))
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
    monkeypatch.setattr("trainables.throughput.measure", lambda *a, **k: pytest.fail("measured despite bad input"))
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
    totals = {"trial_epochs_halving": 80, "device_hours_halving": 0.5, "wall_s_halving": 1000.0, "serial_s": 200.0}
    line = calibrate.render_worst_case(plan, type("Calibration", (), {"totals": totals})())
    assert "352 trial-epochs" in line and f"{0.5 * 352 / 80:.2f} device-hours" in line
    # The wall time past the serial 200 s grows as the trial-epochs: 200 + 800 x 352 / 80 = 3720 s.
    assert cost.worst_case(plan, totals)["wall_s"] == pytest.approx(3720.0) and "1 h 02 min wall time" in line
    # search.max_trial_epochs 120 bounds it all: 120 trial-epochs, wall 200 + 800 x 120 / 80 = 1400 s.
    capped = make_plan(load_spec(path, ["search.max_trial_epochs=120"]), path, None, allow_missing=True)
    assert cost.worst_case(capped, totals) == pytest.approx({"trial_epochs": 120, "device_hours": 0.5 * 120 / 80,
                                                             "wall_s": 1400.0})


def test_overheads_count_as_the_formula_says(spec_file):
    """With fixed measurements, every term of sweep/plan/cost.py's formula, worked out by hand. 8 cells of 3
    trials, 6 epochs, one rung at 2 (eta 3): E = 3x2 + 1x4 = 10 trial-epochs, R = 1 x (3-1)/3 = 2/3 restores,
    F = 1 trial predicting at the end. 90 train, 30 val, 30 test images; 45 train and 60 eval images/s; build
    2 s, checkpoint save 0.5 s, load 0.25 s; 2 slots.

    fraction 1:   epoch 90/45 + 30/60 = 2.5; final 60/60 = 1; start 1 + 2 = 3; per epoch 2.5 + 0.5 + 0.5 = 3.5;
                  restore 3 + 2 + 0.25 = 5.25  ->  halving 3x3 + 10x3.5 + 2/3x5.25 + 1 = 48.5 s
    fraction 0.5: epoch 1.5, per epoch 2.5  ->  9 + 25 + 3.5 + 1 = 38.5 s
    4 cells of each: 348 s; device-hours (348 + 6 s imports x 2 slots) / 3600 = 0.1;
    wall 20 + 6 + 348/2 + (1 - 1/2) x (4 x 3.5 + 1) = 207.5 s.
    Exhaustive: 3 x (3 + 1) + 18 x 3.5 = 75 and 12 + 45 = 57 s per cell: 528 s; wall 26 + 264 + 0.5 x 11.5."""
    plan = make_plan(load_spec(spec_file), spec_file, None, allow_missing=True)
    group = {"train_images_per_s": 45.0, "eval_images_per_s": 60.0, "build_s": 2.0, "checkpoint_save_s": 0.5,
             "checkpoint_load_s": 0.25}
    measured = {cost.group_of(plan.spec, c).key: group for c in plan.cells}
    sizes = {"synth": {"train": 90, "val": 30, "test": 30}}
    cells, totals = cost.estimate(plan, measured, sizes, OVERHEADS, slots=2)
    by_fraction = {c["cell"].split("frac=")[1].split("/")[0]: c for c in cells}
    assert by_fraction["1"]["seconds_halving"] == pytest.approx(48.5)
    assert by_fraction["0.5"]["seconds_halving"] == pytest.approx(38.5)
    assert by_fraction["1"]["restores_halving"] == pytest.approx(2 / 3)
    assert totals["device_hours_halving"] == pytest.approx(0.1)
    assert totals["wall_s_halving"] == pytest.approx(207.5)
    assert totals["device_hours_exhaustive"] == pytest.approx((528 + 12) / 3600)
    assert totals["wall_s_exhaustive"] == pytest.approx(26 + 264 + 5.75)
    # Without overheads, what was estimated before: the steps alone, 4 x (2.5 + 1.5) x 10 s.
    bare = {k: 0.0 for k in OVERHEADS}
    steps = {k: {**group, "build_s": 0.0, "checkpoint_save_s": 0.0, "checkpoint_load_s": 0.0} for k in measured}
    sizes_without_test = {"synth": {"train": 90, "val": 30, "test": 0}}
    _, before = cost.estimate(plan, steps, sizes_without_test, bare, slots=1)
    assert before["device_hours_halving"] == pytest.approx((160 + 8 * 30 / 60) / 3600)  # + each finisher's val


def test_the_harness_constants_come_from_its_timeline():
    """One slot: A's first epoch, B and C started (1 s each beyond an epoch), A restored at its rung (2 s beyond an
    epoch) and its last epoch. Every epoch gap is 0.35 s with a 0.05 s sleep: 0.30 s of logging. Counted:
    3 x 1 + 1 x 2 + 5 epochs x 0.35 = 6.75 s of a 20 s wall: the sweep's own 13.25 s."""
    e = overheads.Event
    events = [e(10.0, "A", 1), e(11.35, "B", 1), e(12.70, "C", 1), e(15.05, "A", 2), e(15.40, "A", 3)]
    fit = overheads.fit_harness(events, wall_s=20.0, sleep_s=0.05)
    assert fit["epoch_s"] == pytest.approx(0.30) and fit["trial_s"] == pytest.approx(1.0)
    assert fit["pause_s"] == pytest.approx(2.0) and fit["sweep_s"] == pytest.approx(13.25)
    assert (fit["trials"], fit["restores"], fit["trial_epochs"]) == (3, 1, 5)
    no_restore = overheads.fit_harness([*events[:3], e(13.05, "C", 2)], wall_s=20.0, sleep_s=0.05)
    assert no_restore["pause_s"] == no_restore["trial_s"]  # not seen: counted as a trial's start
    with pytest.raises(overheads.OverheadError, match="nothing to time"):
        overheads.fit_harness(events[:1], wall_s=5.0, sleep_s=0.05)


SIMULATED = """
name: costed
task: simulated
datasets: [{name: synthetic, id: d0, options: {train: 16, val: 8, test: 8}}]
backbones: [{name: test_resnet, weights: random}]
methods: [linear, bitfit]
seeds: [0]
image_size: 16
train: {epochs: 3, epoch_seconds: 0.01, val_images: 10, test_images: 10}
search: {sampler: grid, trials_per_cell: 3, extend: false, max_epoch_doublings: 0}
scheduler: {type: halving, grace_period: 1, reduction_factor: 3}
resources: {cpus_per_trial: 1}
"""


def test_the_cost_of_a_finished_sweep(tmp_path, monkeypatch, capsys):
    """A simulated sweep of 2 cells x 3 trials, 3 epochs, one rung at 1 (eta 3): 2 x (3 + 1 x 2) = 10 trial-epochs
    by construction; read back from MLflow, and put beside an estimate in a cost record."""
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "costed.yaml"
    spec.write_text(SIMULATED)
    storage = tmp_path / "store"
    assert launch_main(["--config", str(spec), "--storage", str(storage)]) == 0
    capsys.readouterr()
    actual = cost.actual_cost(f"sqlite:///{storage / 'mlflow.db'}", "costed", [0])
    assert (actual["trials"], actual["trial_epochs"], actual["rounds_run"], actual["cells_added"]) == (6, 10, 0, 0)
    assert actual["complete"] and actual["wall_s"] > 0 and actual["cells_planned"] == 2
    estimate = tmp_path / "estimate.json"
    estimate.write_text(json.dumps({"costed": {"device": "test", "totals": {
        "trial_epochs_halving": 10, "wall_s_halving": 50.0, "serial_s": 10.0, "device_hours_halving": 0.01,
        "slots": 2}, "worst_case": {"trial_epochs": 10, "wall_s": 50.0, "device_hours": 0.01}}}))
    out = tmp_path / "cost.json"
    assert calibrate.main(["--actual", "--storage", str(storage), "--name", "costed", "--estimate", str(estimate),
                           "--wall-seconds", "40", "--out", str(out)]) == 0
    record = cost.check_record(json.loads(out.read_text()), str(out))
    assert record["estimate_for_what_ran"] == {"trial_epochs": 10, "wall_s": 50.0}
    assert record["ratios"] == {"trial_epochs": 1.0, "wall": 50.0 / 40.0}
    assert "10 trial-epochs" in capsys.readouterr().out


def test_added_seeds_count_only_where_their_cells_ran(tmp_path, monkeypatch, capsys):
    """A sweep stopped right after adaptive seeds asked for more: planned seeds 0 and 1 of full and lora ran, then
    seed 2 of full ran while seed 2 of lora and seed 3 of both were registered (their MLflow cell runs exist, as the
    seed extender makes them before any trial) but never started. One trial per cell of 4 epochs, which no
    scheduler stops (a lone trial always goes on): 5 cells ran, 5 x 4 = 20 trial-epochs trained and estimated; one
    cell added ran, three did not; full took three seeds."""
    from sweep.tune import run as tune_run
    from tests.test_report import fake_sweep

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    trial = [{"lr": 1e-3, "val": 0.8, "test": 0.8}]
    fake_sweep(uri, "s", {("d", m, 1.0, seed): trial for m in ("full", "lora") for seed in (0, 1)})
    fake_sweep(uri, "s", {("d", "full", 1.0, 2): trial})
    fake_sweep(uri, "s", {("d", "lora", 1.0, 2): [], ("d", "full", 1.0, 3): [], ("d", "lora", 1.0, 3): []}, budget=1)
    actual = cost.actual_cost(uri, "s", initial_seeds=[0, 1])
    assert (actual["cells_planned"], actual["cells_added"], actual["cells_added_not_run"]) == (4, 1, 3)
    assert (actual["trials"], actual["trial_epochs"], actual["most_seeds_per_comparison"]) == (5, 20, 3)
    assert sorted(r["cell"] for r in actual["rounds"]) == [f"cls/d/bb/{m}/frac=1/seed={s}" for m, s in (
        ("full", 0), ("full", 1), ("full", 2), ("lora", 0), ("lora", 1))]
    estimate = tmp_path / "estimate.json"
    estimate.write_text(json.dumps({"s": {"device": "test", "totals": {
        "trial_epochs_halving": 16, "wall_s_halving": 50.0, "serial_s": 10.0, "device_hours_halving": 0.01,
        "slots": 2}, "worst_case": {"trial_epochs": 32, "wall_s": 90.0, "device_hours": 0.02}}}))
    spec = tmp_path / "spec.json"
    monkeypatch.setattr(tune_run, "load_inputs", lambda storage, name: {
        "mlflow_uri": uri, "spec": {"name": "s", "datasets": [{"name": "d"}], "backbones": [{"name": "bb", "weights": "random"}],
                                    "methods": ["full", "lora"], "seeds": {"initial": 2, "max": 4}}})
    assert calibrate.main(["--actual", "--storage", str(tmp_path), "--name", "s", "--estimate", str(estimate),
                           "--wall-seconds", "40", "--out", str(spec)]) == 0
    record = cost.check_record(json.loads(spec.read_text()), str(spec))
    # The estimate for what ran: the planned 16 trial-epochs' wall time scaled by 20 / 16 past the serial part.
    assert record["estimate_for_what_ran"] == {"trial_epochs": 20, "wall_s": 10.0 + 40.0 * 20 / 16}
    assert record["actual"]["cells_added"] == 1
    printed = capsys.readouterr().out
    assert "1 cell(s) added with seeds (3 more added but not run: the sweep stopped before them" in printed


def test_bad_cost_input_is_explained(tmp_path, capsys):
    storage = tmp_path / "store"
    storage.mkdir()
    assert calibrate.main(["--actual", "--storage", str(storage)]) == 2
    assert "--actual needs --name" in capsys.readouterr().err
    assert calibrate.main(["--actual", "--storage", str(storage), "--name", "nothing"]) == 2
    assert "holds no medpeft-sweep.json" in capsys.readouterr().err
    with pytest.raises(CalibrationError, match="has no sweep 'other'"):
        cost.estimate_entry({"a": {}, "b": {}}, "other")
    with pytest.raises(CalibrationError, match="written before wall-time estimates"):
        cost.estimate_entry({"a": {"totals": {"trial_epochs_halving": 3}}}, "a")
    with pytest.raises(CalibrationError, match="not a cost record"):
        cost.check_record({"sweep": "x"}, "cost.json")
    with pytest.raises(CalibrationError, match=r"actual\.wall_s is missing or not a number"):
        cost.check_record({"schema": cost.COST_RECORD_SCHEMA, "estimate": {"planned": {"wall_s": 1, "trial_epochs": 1}},
                           "estimate_for_what_ran": {"wall_s": 1, "trial_epochs": 1},
                           "actual": {"trial_epochs": 1}}, "cost.json")


def test_a_capped_training_set_is_estimated_at_its_cap(tmp_path, monkeypatch):
    """`max_train_images` is what a trial trains on (trainables/data/prepare.py), so the estimate counts the cap,
    not the split: 90 training images capped at 40, validation untouched."""
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "capped.yaml"
    path.write_text(SPEC.replace("num_classes: 3}}", "num_classes: 3}, max_train_images: 40}"))
    plan = make_plan(load_spec(path), path, None, allow_missing=True)
    assert cost.dataset_sizes(plan, {}) == {plan.cells[0].dataset.key: {"train": 40, "val": 30, "test": 30}}


def test_an_epoch_cycled_to_its_minimum_steps_is_estimated_at_every_pass(tmp_path, monkeypatch):
    """train.min_steps_per_epoch makes a small fraction's epoch run whole passes (trainables/classification.py);
    the estimate counts them. 90 training images in batches of 8, at least 6 steps an epoch: fraction 1 is 90
    images, 11 batches of 8 and one of 2 = 12 steps, one pass; fraction 0.1 is 9 images, 8 + 1, the single image
    joining the first batch (min_last 2): 1 step a pass, so 6 passes, 54 images an epoch, 54/45 + 30/60 = 1.7 s."""
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "cycled.yaml"
    path.write_text(SPEC.replace("fractions: [1.0, 0.5]", "fractions: [1.0, 0.1]")
                    .replace("batch_size: 8}", "batch_size: 8, min_steps_per_epoch: 6}"))
    plan = make_plan(load_spec(path), path, None, allow_missing=True)
    group = {"train_images_per_s": 45.0, "eval_images_per_s": 60.0, "build_s": 0.0, "checkpoint_save_s": 0.0,
             "checkpoint_load_s": 0.0}
    measured = {cost.group_of(plan.spec, c).key: group for c in plan.cells}
    cells, _ = cost.estimate(plan, measured, {"synth": {"train": 90, "val": 30, "test": 30}}, OVERHEADS, slots=1)
    by_fraction = {c["cell"].split("frac=")[1].split("/")[0]: c for c in cells}
    assert by_fraction["0.1"]["train_images_per_epoch"] == pytest.approx(54)
    assert by_fraction["0.1"]["epoch_s"] == pytest.approx(1.7)
    assert by_fraction["1"]["train_images_per_epoch"] == pytest.approx(90)
    # Without the knob, one pass: the fraction's 9 images.
    plain = make_plan(load_spec(path, ["train.min_steps_per_epoch=1"]), path, None, allow_missing=True)
    cells, _ = cost.estimate(plain, measured, {"synth": {"train": 90, "val": 30, "test": 30}}, OVERHEADS, slots=1)
    assert [c["train_images_per_epoch"] for c in cells if "frac=0.1/" in c["cell"]] == pytest.approx([9] * 4)


GROUP = {"train_images_per_s": 80.0, "eval_images_per_s": 200.0, "build_s": 0.5, "checkpoint_save_s": 0.1,
         "checkpoint_load_s": 0.1, "peak_memory_mb": 10.0, "checkpoint_mb": 1.0}


def test_cached_groups_follow_the_machines_speed_now(spec_file, monkeypatch):
    """A group measured while the reference workload ran at 40 steps/s, read back while it runs at 30: the machine
    is 3/4 as fast, so the group's 80 and 200 images/s count as 60 and 150, and its epoch (90 / 60 + 30 / 150 at
    fraction 1) takes 1.7 s, not 90 / 80 + 30 / 200 = 1.275 s."""
    plan = make_plan(load_spec(spec_file), spec_file, None, allow_missing=True)
    groups = [cost.group_of(plan.spec, c) for c in plan.cells]
    monkeypatch.setattr("trainables.throughput.measure", lambda **k: dict(GROUP))
    monkeypatch.setattr(speed, "reference_rate", lambda *a, **k: 40.0)
    name, first, now = cost.measure_groups(groups, "cpu")
    assert now["reference_per_s"] == 40.0 and all(not m["reused"] and m["drift"] == 1.0 for m in first.values())
    monkeypatch.setattr("trainables.throughput.measure", lambda **k: pytest.fail("measured again"))
    monkeypatch.setattr(speed, "reference_rate", lambda *a, **k: 30.0)
    _, again, _ = cost.measure_groups(groups, "cpu")
    assert all(m["reused"] and m["drift"] == pytest.approx(0.75) for m in again.values())
    assert [(m["train_images_per_s"], m["eval_images_per_s"], m["build_s"]) for m in again.values()] == \
        [(pytest.approx(60.0), pytest.approx(150.0), 0.5)] * len(again)
    cells, _ = cost.estimate(plan, again, {"synth": {"train": 90, "val": 30, "test": 30}}, OVERHEADS, slots=1)
    assert {round(c["epoch_s"], 6) for c in cells if "frac=1/" in c["cell"]} == {1.7}
    # A cache written before the reference was timed has nothing to scale by: read as it is.
    cache = json.loads(cost.cache_file(name).read_text())
    cost.cache_file(name).write_text(json.dumps({k: {f: v for f, v in m.items() if f != "reference_per_s"}
                                                 for k, m in cache.items()}))
    _, old, _ = cost.measure_groups(groups, "cpu")
    assert {(m["train_images_per_s"], m["drift"]) for m in old.values()} == {(80.0, 1.0)}


def test_groups_are_measured_as_many_at_once_as_the_sweep_runs_them(spec_file, monkeypatch):
    """On 2 slots a group is measured in 2 processes at once (sweep.plan.speed.together) and counts at their
    mean speed, (50 + 70) / 2 = 60 images/s; that measurement is cached apart from one made alone, and a
    1-slot estimate does not borrow it."""
    plan = make_plan(load_spec(spec_file), spec_file, None, allow_missing=True)
    groups = [cost.group_of(plan.spec, c) for c in plan.cells][:1]
    monkeypatch.setattr(speed, "reference_rate", lambda *a, **k: 40.0)
    calls = []

    def at_once(function, kwargs, processes):
        calls.append(processes)
        return [{**GROUP, "train_images_per_s": 50.0}, {**GROUP, "train_images_per_s": 70.0}]

    monkeypatch.setattr(speed, "together", at_once)
    monkeypatch.setattr("trainables.throughput.measure", lambda **k: {**GROUP, "train_images_per_s": 99.0})
    _, two, _ = cost.measure_groups(groups, "cpu", slots=2)
    assert calls == [2] and two[groups[0].key]["train_images_per_s"] == pytest.approx(60.0)
    assert two[groups[0].key]["at_once"] == 2
    _, one, _ = cost.measure_groups(groups, "cpu", slots=1)
    assert calls == [2] and one[groups[0].key]["train_images_per_s"] == 99.0 and not one[groups[0].key]["reused"]
    _, two_again, _ = cost.measure_groups(groups, "cpu", slots=2)
    assert two_again[groups[0].key]["reused"] and two_again[groups[0].key]["train_images_per_s"] == pytest.approx(60)


def _arrive_then_count(ready, folder: str) -> int:
    """One process of `together`: leave a mark, wait at the barrier, count the marks (all of them, if the
    barrier held every process until all had arrived)."""
    from pathlib import Path

    Path(folder, str(os.getpid())).touch()
    ready()
    return len(list(Path(folder).iterdir()))


def _fail(ready) -> None:
    raise RuntimeError("no model of that name")


@pytest.mark.slow
def test_processes_measured_together_start_their_timing_together(tmp_path):
    assert speed.together(_arrive_then_count, {"folder": str(tmp_path)}, 3) == [3, 3, 3]
    with pytest.raises(speed.SpeedError, match="no model of that name"):
        speed.together(_fail, {}, 2)
    assert speed.reference_rate(1, 0.2) > 0
