from pathlib import Path

import pytest

from sweep.plan.grid import base_config, expand, grid_values, trial_budget, with_searched
from sweep.plan.spec import (
    DEFAULT_SPEC,
    Dist,
    SpecError,
    SweepSpec,
    apply_override,
    load_method_spaces,
    load_specs,
)
from tests.conftest import load_spec


def small_spec(**over) -> SweepSpec:
    raw = {
        "name": "t",
        "datasets": [{"name": "synthetic"}, {"name": "medmnist", "options": {"subset": "breastmnist"}}],
        "backbones": [{"name": "test_resnet", "weights": "random"}],
        "methods": ["linear", {"name": "lora_conv", "knobs": {"r": 4}}],
        "fractions": [1.0, 0.25],
        "seeds": [0, 1],
        "search": {"trials_per_cell": 3},
    }
    raw.update(over)
    return SweepSpec.model_validate(raw)


def test_quickstart_spec_loads_and_overrides_apply():
    spec = load_spec(DEFAULT_SPEC, ["train.epochs=2", "methods=[linear, bitfit]", "datasets.0.options.size=64"])
    assert spec.name == "quickstart"
    assert spec.train["epochs"] == 2
    assert [m.name for m in spec.methods] == ["linear", "bitfit"]
    assert spec.datasets[0].options["size"] == 64


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "datasets.7.name=x"])
def test_bad_overrides_are_spec_errors(bad):
    with pytest.raises(SpecError):
        apply_override({"datasets": [{}]}, bad)


def test_grid_expansion_keys_are_stable_readable_and_complete():
    spec = small_spec()
    cells = expand(spec, "cls", load_method_spaces(spec))
    assert len(cells) == 2 * 1 * 2 * 2 * 2
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "cls/synthetic/test_resnet/linear/frac=1/seed=0"
    assert "cls/breastmnist/test_resnet/lora_conv/frac=0.25/seed=1" in keys
    assert keys == [c.key for c in expand(spec, "cls", load_method_spaces(spec))]  # deterministic
    assert all(c.budget == 3 for c in cells)


def test_per_backbone_method_lists():
    spec = small_spec(backbones=[{"name": "test_vit", "methods": ["linear"]}, {"name": "test_resnet"}])
    cells = expand(spec, "cls", load_method_spaces(spec))
    vit = {c.method.key for c in cells if c.backbone.key == "test_vit"}
    resnet = {c.method.key for c in cells if c.backbone.key == "test_resnet"}
    assert vit == {"linear"} and resnet == {"linear", "lora_conv"}


def test_log_grid_and_budget_clamp():
    dist = Dist(low=1e-4, high=1e-2)
    assert dist.grid(3) == [1e-4, 1e-3, 1e-2]
    space = {"lr": dist, "knobs.r": Dist(choices=[4, 8])}
    assert len(grid_values(space, 3)) == 6
    spec = small_spec(search={"trials_per_cell": 5, "sampler": "grid"})
    assert trial_budget(spec, {"lr": dist}) == 5  # a range is cut into trials_per_cell grid points
    assert trial_budget(spec, {"lr": Dist(choices=[1e-3, 1e-2])}) == 2  # never more than the grid holds
    spec = small_spec(search={"trials_per_cell": 50, "sampler": "grid", "grid_points": 4})
    assert trial_budget(spec, {"lr": dist}) == 4


@pytest.mark.parametrize("dist", [{"low": 1e-2, "high": 1e-3}, {"low": 0.0, "high": 1.0}, {"low": 1e-3}, {"choices": []}])
def test_bad_ranges_are_rejected(dist):
    with pytest.raises(ValueError):
        Dist.model_validate(dist)


def test_lr_range_low_not_below_high_is_a_spec_error(tmp_path: Path):
    spec = small_spec(search={"spaces": {"linear": {"lr": {"low": 0.1, "high": 0.01}}}})
    with pytest.raises(SpecError, match="low"):
        load_method_spaces(spec)


def test_searched_values_land_in_train_and_knobs():
    spec = small_spec()
    cell = expand(spec, "cls", load_method_spaces(spec))[-1]
    base = base_config(spec, cell, {"uri": None})
    config = with_searched(base, {"lr": 0.01, "knobs.r": 16}, cell.trial_key(2))
    assert config["train"]["lr"] == 0.01 and config["method"]["knobs"]["r"] == 16
    assert config["tracking"]["trial_key"] == cell.key + "/trial=2"
    assert base["method"]["knobs"] == {"r": 4}  # the base is not mutated


def test_duplicate_axis_entries_need_ids():
    with pytest.raises(ValueError, match="twice"):
        small_spec(methods=["linear", "linear"])
    spec = small_spec(methods=["linear", {"name": "linear", "id": "linear_wd", "bn_mode": "train"}])
    assert [m.key for m in spec.methods] == ["linear", "linear_wd"]


ARMS = """
name: study
seeds: [0, 1]
scheduler: {type: asha, grace_period: 2}
resources: {cpus_per_trial: 2, per_method: {full: {gpus: 1}}}
arms:
  - id: a
    datasets: [{name: synthetic}]
    backbones: [{name: test_resnet, weights: random}]
    methods: [linear]
    train: {epochs: 3}
  - id: b
    task: t2i
    datasets: [{name: synthetic}]
    backbones: [{name: tiny-sd, weights: random}]
    methods: [lora]
    seeds: [0]
    scheduler: {grace_period: 1}
    resources: {per_method: {lora: {cpus: 1}}}
    train: {epochs: 2, sample_steps: 4}
"""


def test_arms_share_the_top_level_and_replace_or_merge_it(tmp_path):
    path = tmp_path / "arms.yaml"
    path.write_text(ARMS)
    a, b = load_specs(path, ["train.epochs=5", "arms.1.methods=[lora, bias]"])
    assert (a.name, a.arm, a.task, b.name, b.arm, b.task) == ("study-a", "a", "classification", "study-b", "b", "t2i")
    assert a.seeds == [0, 1] and b.seeds == [0]  # replaced
    assert a.scheduler.grace_period == 2 and b.scheduler.grace_period == 1 and b.scheduler.type == "asha"  # merged
    assert set(b.resources.per_method) == {"full", "lora"} and b.resources.cpus_per_trial == 2
    assert a.train == {"epochs": 5} and b.train == {"epochs": 5, "sample_steps": 4}  # --set reaches every arm
    assert [m.name for m in b.methods] == ["lora", "bias"]


@pytest.mark.parametrize(("arms", "message"), [
    ("arms: {a: 1}", "must be a list of mappings, each with an `id`"),
    ("arms: [{id: a}, {id: a}]", "must be distinct"),
    ("arms: [{id: a, fractions: [2]}]", "arm 'a' is invalid"),
])
def test_bad_arms_are_named(tmp_path, arms, message):
    path = tmp_path / "arms.yaml"
    path.write_text("name: s\ndatasets: [{name: synthetic}]\nbackbones: [{name: test_resnet}]\nmethods: [linear]\n"
                    + arms)
    with pytest.raises(SpecError, match=message):
        load_specs(path)
