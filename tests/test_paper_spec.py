"""The study as published, one spec with five arms (cnn, vit, ssl, volume, t2i): its dry run needs none of the data
or weights, and says what each arm would run."""

from pathlib import Path

import pytest

from sweep.launch import main
from sweep.plan.spec import load_specs
from tests import dataset_layouts as layouts
from tests.conftest import needs_shared_data

REPO = Path(__file__).resolve().parents[1]
PAPER = str(REPO / "search_spaces" / "paper.yaml")
DATASETS = ["breastus", "fitzpatrick17k", "ham10000", "smdg", "rsna_pneumonia"]
CNN = ["full", "linear", "tsa", "batchnorm", "bias", "ssf"]
VIT = ["full", "linear", "attention", "bitfit", "lora", "ssf", "adaptformer", "layernorm"]
UNET = ["full", "attention", "bias", "norm", "norm_bias_attention", "lora", "svdiff", "difffit"]
VIT_BLH = ["vit_base_patch16_224.augreg_in21k", "vit_large_patch16_224.augreg_in21k", "vit_huge_patch14_224.orig_in21k"]
ARMS = {  # arm: (task, datasets, backbones, methods, fractions, seeds)
    "cnn": ("classification", DATASETS, ["resnet50.tv_in1k"], CNN, [1.0], [0, 1, 2]),
    "vit": ("classification", DATASETS, VIT_BLH, VIT, [1.0], [0, 1, 2]),
    "ssl": ("classification", DATASETS, ["vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai"], VIT, [1.0],
            [0, 1, 2]),
    "volume": ("classification", ["ham10000"], VIT_BLH[:2], ["full", "bitfit", "lora"],
               [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0], [0, 1, 2]),
    "t2i": ("t2i", ["mimic_cxr"], ["stable-diffusion-v1-5"], UNET, [1.0, 0.5, 0.1], [0, 1, 2, 3]),
}


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_is_the_published_protocol(arm):
    task, datasets, backbones, methods, fractions, seeds = ARMS[arm]
    spec = next(s for s in load_specs(PAPER) if s.arm == arm)
    assert spec.task == task and spec.name == f"paper-{arm}"
    assert [d.key for d in spec.datasets] == datasets
    assert [b.key for b in spec.backbones] == backbones
    for backbone in spec.backbones:
        assert [m.key for m in spec.methods_for(backbone)] == methods
    assert spec.fractions == fractions and spec.seeds == seeds
    if task == "classification":
        assert spec.train["select_metric"] == "f1" and spec.train["batch_size"] == 512
        assert spec.train["micro_batch_size"] == "auto" and spec.bn_mode == "train"
        assert spec.image_size == 224


def test_paper_dry_run_prints_every_arm_its_cost_and_what_is_missing(tmp_path, capsys):
    storage = tmp_path / "store"
    assert main(["--config", PAPER, "--dry-run", "--storage", str(storage), "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for arm, (_task, datasets, backbones, methods, fractions, seeds) in ARMS.items():
        cells = len(datasets) * len(backbones) * len(methods) * len(fractions) * len(seeds)
        assert f"Sweep 'paper-{arm}'" in out and f"{cells} cells" in out
    assert "cls/smdg/resnet50.tv_in1k/tsa/frac=1/seed=2" in out
    assert "cls/rsna_pneumonia/vit_huge_patch14_224.orig_in21k/lora/frac=1/seed=0" in out
    assert "cls/ham10000/vit_large_patch16_224.augreg_in21k/bitfit/frac=0.01/seed=1" in out
    assert "t2i/mimic_cxr/stable-diffusion-v1-5/svdiff/frac=0.1/seed=3" in out
    assert "selection on val/best_f1" in out
    assert "797,184 / " in out and "222,805 / " in out  # the study's U-Net LoRA and SV-Diff, counted offline
    missing = out.split("Missing")[1]
    for dataset in DATASETS:
        assert f"dataset {dataset!r}" in missing
    assert "resnet50.tv_in1k" in missing  # offline, weights not cached
    assert not storage.exists()


@needs_shared_data
def test_a_dataset_that_is_present_is_not_listed_missing(tmp_path, capsys):
    layouts.ham10000(tmp_path / "data" / "HAM10000", per_class=3)
    assert main(["--config", PAPER, "--dry-run", "--arm", "cnn", "--data-root", str(tmp_path / "data")]) == 0
    missing = capsys.readouterr().out.split("Missing")[1]
    assert "'ham10000'" not in missing and "'breastus'" in missing


def test_the_extended_spec_is_the_study_grid_with_our_methods_added():
    study = {s.arm: s for s in load_specs(PAPER)}
    extended = {s.arm: s for s in load_specs(REPO / "search_spaces" / "paper_extended.yaml")}
    assert set(extended) == set(study)
    for arm, spec in extended.items():
        base = study[arm]
        assert spec.name == f"paper-extended-{arm}"
        assert (spec.datasets, spec.backbones, spec.fractions, spec.seeds, spec.train) == \
            (base.datasets, base.backbones, base.fractions, base.seeds, base.train)
        ours = [m.key for m in spec.methods_for(spec.backbones[0])]
        theirs = [m.key for m in base.methods_for(base.backbones[0])]
        assert ours[: len(theirs)] == theirs and len(ours) > len(theirs)
    assert "vpt_deep" in [m.key for m in extended["vit"].methods] and "conv_adapter" in [m.key for m in extended["cnn"].methods]
