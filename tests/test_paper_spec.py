"""The study as published, one spec with five arms (cnn, vit, ssl, volume, t2i): its dry run needs none of the data
or weights, and says what each arm would run."""

import re
from pathlib import Path

import pytest

from sweep.launch import main
from sweep.plan.spec import load_specs
from tests import dataset_layouts as layouts
from tests.conftest import SHARED_DATA, needs_shared_data

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
    out = capsys.readouterr().out
    missing = out.split("Missing")[1]
    assert "'ham10000'" not in missing and "'breastus'" in missing
    # Its seven classes, read from the files that are here, size the linear probe's head: 2,048 x 7 + 7.
    assert dry_run_counts(out, "cls/ham10000/resnet50.tv_in1k/linear/frac=1/seed=0")[0] == RESNET50_FEATURES * 7 + 7


# ResNet-50 as defined (He et al. 2016; torchvision's resnet50, which timm's resnet50.tv_in1k is): 2,048 features
# into the head; BatchNorm over 26,560 channels (the stem's 64, then per bottleneck of width w: w + w + 4w, plus 4w
# in each stage's downsampling, stages of 3, 4, 6 and 3 blocks at w = 64, 128, 256, 512); 25,557,032 parameters with
# its 1,000-class head.
RESNET50_FEATURES = 2048
RESNET50_BN_CHANNELS = 64 + sum(blocks * 6 * w + 4 * w for blocks, w in ((3, 64), (4, 128), (6, 256), (3, 512)))
RESNET50_BODY = 25_557_032 - (RESNET50_FEATURES * 1000 + 1000)
# EfficientNet-Lite0 (Tan and Le 2019; TensorFlow's Lite variant): 1,280 features into the head.
LITE0_FEATURES = 1280


def dry_run_counts(out: str, cell: str) -> tuple[int, int, str]:
    """(trainable, total, what follows) of a cell's row in a dry run's table."""
    line = next(line for line in out.splitlines() if line.startswith(cell + " "))
    found = re.search(r"([\d,]+) / ([\d,]+) \([\d.]+%\)(.*)$", line)
    return int(found[1].replace(",", "")), int(found[2].replace(",", "")), found[3].strip()


def test_dry_run_sizes_each_head_for_its_datasets_classes(tmp_path, capsys):
    """Without any of the data: BreastUS has 3 classes and HAM10000 7, fixed by their publishers; a folder of the
    user's own that is not here cannot tell, and its counts say so."""
    assert main(["--config", PAPER, "--dry-run", "--arm", "cnn", "--data-root", str(tmp_path), "--set", "seeds=[0]",
                 "--set", "datasets=[{name: breastus}, {name: ham10000}, {name: smdg}, {name: imagefolder, "
                 "root: mine}]"]) == 0
    out = capsys.readouterr().out
    for dataset, classes in (("breastus", 3), ("ham10000", 7), ("smdg", 2)):
        head = RESNET50_FEATURES * classes + classes
        cell = f"cls/{dataset}/resnet50.tv_in1k/{{}}/frac=1/seed=0"
        assert dry_run_counts(out, cell.format("linear")) == (head, RESNET50_BODY + head, "")
        assert dry_run_counts(out, cell.format("batchnorm")) == (2 * RESNET50_BN_CHANNELS + head,
                                                                 RESNET50_BODY + head, "")
        assert dry_run_counts(out, cell.format("full")) == (RESNET50_BODY + head, RESNET50_BODY + head, "")
    assert dry_run_counts(out, "cls/breastus/resnet50.tv_in1k/linear/frac=1/seed=0")[0] == 6147  # as docs/parameter_counts.md says
    assert dry_run_counts(out, "cls/imagefolder/resnet50.tv_in1k/linear/frac=1/seed=0")[2] == "*"
    assert "* the dataset's classes are unknown until its files are here: its head is counted for 2" in out


@needs_shared_data
def test_dry_run_takes_the_classes_from_the_data_when_it_is_here(capsys):
    """The CNN study's own datasets: BUSI and the HAM10000 subset are CSVs whose label columns hold 3 and 7 classes;
    the MedMNIST subsets 2 (BreastMNIST) and 5 (RetinaMNIST)."""
    assert main(["--config", str(REPO / "search_spaces" / "cnn_study.yaml"), "--dry-run", "--data-root",
                 str(SHARED_DATA), "--set", "seeds=[0]", "--set", "fractions=[1.0]"]) == 0
    out = capsys.readouterr().out
    _, two, _ = dry_run_counts(out, "cls/breastmnist/tf_efficientnet_lite0/linear/frac=1/seed=0")
    for dataset, classes in (("breastmnist", 2), ("retinamnist", 5), ("busi", 3), ("ham10000-subset", 7)):
        head = LITE0_FEATURES * classes + classes
        trainable, total, note = dry_run_counts(out, f"cls/{dataset}/tf_efficientnet_lite0/linear/frac=1/seed=0")
        assert (trainable, total - two, note) == (head, head - (LITE0_FEATURES * 2 + 2), "")


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
