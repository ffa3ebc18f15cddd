"""The study as one spec with two arms (classification, text-to-image): its dry run needs none of the data or
weights."""

from pathlib import Path

from sweep.launch import main
from tests import dataset_layouts as layouts
from tests.conftest import needs_shared_data

REPO = Path(__file__).resolve().parents[1]
PAPER = str(REPO / "search_spaces" / "paper.yaml")
VIT = ["full", "linear", "bitfit", "layernorm", "attention", "vpt_shallow", "vpt_deep", "adaptformer", "lora", "ssf",
       "fact_tt", "fact_tk", "convpass"]
CNN = ["full", "linear", "bitfit", "batchnorm", "ssf", "conv_adapter", "lora_conv"]
UNET = ["full", "attention", "bias", "norm", "norm_bias", "norm_bias_attention", "lora", "svdiff", "difffit"]


def test_paper_dry_run_prints_grid_cost_and_what_is_missing(tmp_path, capsys):
    storage = tmp_path / "store"
    assert main(["--config", PAPER, "--dry-run", "--storage", str(storage), "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cells = 5 * (len(VIT) + len(CNN)) * 4 * 3
    assert f"{cells} cells, {cells * 4} trials" in out and "trial-epochs" in out
    for method in VIT:
        assert f"/vit_base_patch16_224.augreg_in21k/{method}/frac=0.1/seed=2" in out
    for method in CNN:
        assert f"cls/smear/resnet50.tv_in1k/{method}/frac=0.25/seed=0" in out
    missing = out.split("Missing")[1]
    for dataset in ("ham10000", "fitzpatrick17k", "breastus", "smear", "retinopathy"):
        assert f"dataset {dataset!r}" in missing
    assert "vit_base_patch16_224.augreg_in21k" in missing  # offline, weights not cached
    assert not storage.exists()


def test_paper_text_to_image_arm(tmp_path, capsys):
    assert main(["--config", PAPER, "--dry-run", "--arm", "t2i", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Sweep 'paper-t2i' (t2i): 9 cells, 27 trials" in out and "paper-cls" not in out
    for method in UNET:
        assert f"t2i/mimic_cxr/stable-diffusion-v1-5/{method}/frac=1/seed=0" in out
    assert "1,594,368 / 861,115,332" in out  # LoRA r=8 on SD v1.5, counted without its weights
    assert "selection on val/best_loss" in out and "grace 1" in out
    missing = out.split("Missing")[1]
    assert "'mimic_cxr'" in missing and "stable-diffusion-v1-5" in missing


@needs_shared_data
def test_a_dataset_that_is_present_is_not_listed_missing(tmp_path, capsys):
    layouts.ham10000(tmp_path / "data" / "HAM10000", per_class=3)
    assert main(["--config", PAPER, "--dry-run", "--data-root", str(tmp_path / "data")]) == 0
    missing = capsys.readouterr().out.split("Missing")[1]
    assert "'ham10000'" not in missing and "'breastus'" in missing
