"""`python -m sweep.report --reference dutt2024`: our numbers beside the study's, ranks, Kendall's tau and the
study's findings recomputed on ours, on a small real sweep whose datasets and backbone carry the study's names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweep.references import load_reference
from sweep.report import cli as report_cli
from sweep.report import reproduction
from sweep.results.scores import method_scores
from tests.conftest import SHARED_DATA, launch, needs_shared_data


@pytest.mark.parametrize(("a", "b"), [([1, 2, 3, 4], [1, 3, 2, 4]), ([0.9, 0.8, 0.7], [0.1, 0.5, 0.9]),
                                      ([1, 1, 2, 3], [2, 1, 2, 5]), ([5, 4, 4, 1, 2], [5, 3, 4, 4, 1])])
def test_kendall_tau_matches_scipy(a, b):
    assert reproduction.kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_the_study_ranks_its_methods_as_it_says():
    """On the study's own numbers: SSF first on ResNet-50, LoRA first over ViT-B/L/H with mean rank 2.4 (as the
    paper states), bias tuning best and LoRA worst by FID."""
    reference = load_reference("dutt2024")
    found = reproduction.compare(reference, pd.DataFrame(columns=["backbone", "dataset", "method", "fraction",
                                                                  "mean", "seeds", "learned"]))
    vits = found.ranks[found.ranks["study_backbone"].isin(["ViT-B", "ViT-L", "ViT-H"])]
    combined = vits.groupby("study_method")["study_mean_rank"].mean()
    assert combined.idxmin() == "LoRA" and combined.min() == pytest.approx(2.4, abs=0.05)
    resnet = found.ranks[found.ranks["study_backbone"] == "ResNet50"].set_index("study_method")["study_mean_rank"]
    assert resnet.idxmin() == "SSF"
    findings = found.findings.set_index("finding")
    assert (findings["verdict"] == "not run").all()
    assert findings.loc["Bias tuning has the best FID (Table 4)", "study"].startswith("Bias 22.4")


@pytest.fixture(scope="module")
def renamed_sweep(tmp_path_factory):
    """Real images and a real pretrained CNN under the study's names: BreastMNIST as BreastUS, RetinaMNIST as
    SMDG, EfficientNet-Lite0 as ResNet-50; four of the study's six CNN methods (TSA and BN tuning not run)."""
    if not (SHARED_DATA / "medmnist").is_dir():
        pytest.skip("../shared/data is not present")
    storage = tmp_path_factory.mktemp("renamed")
    spec = storage / "renamed.yaml"
    spec.write_text("""
name: renamed
task: classification
datasets:
  - {name: medmnist, id: breastus, options: {subset: breastmnist}, on_duplicate: drop}
  - {name: medmnist, id: smdg, options: {subset: retinamnist}}
backbones:
  - {name: tf_efficientnet_lite0, id: resnet50.tv_in1k, weights: default}
methods: [full, linear, bias, ssf]
image_size: 32
train: {epochs: 2, batch_size: 64, warmup_epochs: 0.2, select_metric: f1}
search: {sampler: grid, trials_per_cell: 1, spaces: {full: {lr: [0.001]}, linear: {lr: [0.01]}, bias: {lr: [0.01]},
         ssf: {lr: [0.003]}}, max_epoch_doublings: 0}
scheduler: {type: fifo}
resources: {cpus_per_trial: 1}
""")
    launch("--config", str(spec), "--storage", str(storage), "--data-root", str(SHARED_DATA / "medmnist"))
    return storage


@pytest.mark.long
@needs_shared_data
def test_reference_report_on_a_renamed_real_sweep(renamed_sweep, tmp_path):
    out = tmp_path / "r"
    assert report_cli.main(["--name", "renamed", "--storage", str(renamed_sweep), "--out", str(out),
                        "--reference", "dutt2024"]) == 0
    text = (out / "report.md").read_text()
    section = text.split("## Reproduction of Dutt et al. 2024")[1]
    table = section.split("### Table 2, ResNet50")[1].split("###")[0]
    assert "| method | BreastUS | FitzPatrick | HAM10000 | SMDG | Pneumonia |" in table
    raw = pd.read_parquet(out / "results.parquet")
    full = raw[(raw["method"] == "full") & (raw["dataset"] == "breastus")]["test_f1"].iloc[0] * 100
    assert f"| Full FT | {full:.1f} / 72.0 ({full - 72.0:+.1f})" in table  # ours / published (difference)
    assert "| TSA | - / 90.0 |" in table  # not run here
    assert "Table 2, ResNet50: 12 cells (Full FT, Linear Probing, TSA, BN Tuning, Bias Tuning, SSF on FitzPatrick," \
           in section or "Table 2, ResNet50: " in section.split("### Not run here")[1]
    taus = section.split("Kendall's tau")[1].split("###")[0]
    assert "| ResNet50 | BreastUS |" in taus and "| ResNet50 | SMDG |" in taus
    findings = section.split("### The study's findings, on our numbers")[1]
    assert "| SSF ranks first on ResNet-50 (Table 2) | SSF first (mean rank 1.30) |" in findings
    verdict = findings.split("| SSF ranks first on ResNet-50 (Table 2) |")[1].split("\n")[0]
    assert verdict.rstrip(" |").endswith(("holds", "does not hold"))
    assert "| LoRA ranks first on ViTs (Table 3) | LoRA first (mean rank 2.40) | - | not run |" in findings
    assert "| LoRA has the worst FID (Table 4) | LoRA 410.5 | - | not run |" in findings
    assert (out / "reference-volume.png").stat().st_size > 0
    # the ranks: ours recomputed from the raw rows of the two datasets
    found = reproduction.compare(load_reference("dutt2024"), method_scores(raw))
    mine = found.ranks[(found.ranks["study_backbone"] == "ResNet50") & (found.ranks["our_datasets"] > 0)]
    assert set(mine["study_method"]) <= {"Full FT", "Linear Probing", "Bias Tuning", "SSF"}
    assert np.isfinite(mine["our_mean_rank"]).all()
