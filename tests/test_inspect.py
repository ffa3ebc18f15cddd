import json
from pathlib import Path

import pandas as pd

from sweep.inspect import main, markdown
from trainables.methods import list_methods

REPO = Path(__file__).resolve().parents[1]


def test_methods_lists_every_method_with_knobs_and_reference(capsys):
    assert main(["methods", "--json"]) == 0
    table = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(table) == {m.name for m in list_methods()}
    assert table["lora"]["knobs"]["r"]["default"] == 8 and table["lora"]["knobs"]["alpha"]["default"] == 8
    assert table["vpt_deep"]["knobs"]["tokens"]["default"] == 10
    assert "arXiv:2212.03145" in table["fact_tk"]["reference"]
    assert table["ssf"]["mergeable"] and table["batchnorm"]["bn_mode"] == "train"
    assert main(["methods"]) == 0
    assert "peft:<tuner>" in capsys.readouterr().out


def test_params_for_a_backbone(capsys):
    assert main(["params", "--backbone", "test_vit", "--num-classes", "3", "--image-size", "32", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["linear"]["trainable"] == 64 * 3 + 3
    assert rows["full"]["trainable"] == rows["full"]["total"]
    assert not rows["lora_conv"]["fits"] and "cnn" in rows["lora_conv"]["why"]


def test_generated_parameter_table_is_current():
    assert (REPO / "docs" / "parameter_counts.md").read_text() == markdown()


def test_dataset_report_counts_leaks_fraction_and_cache(tmp_path, capsys):
    from tests import dataset_layouts as layouts

    root = layouts.eyepacs(tmp_path / "eyepacs")
    args = ["dataset", "retinopathy", "--root", str(root), "--fraction", "0.5", "--seed", "3",
            "--image-size", "16", "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 80 and report["groups"] == 40 and report["groups_in_several_splits"] == 0
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["test"].values()) \
        + sum(report["counts"]["val"].values()) == 80
    assert report["cache"]["was_cached"] is False and report["unreadable"] == []
    marked = pd.read_parquet(report["manifest_with_fraction"])
    assert marked["in_fraction"].sum() == sum(report["fraction_counts"].values())
    assert (marked.loc[marked["split"] != "train", "fraction_rank"] == -1).all()
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["cache"]["was_cached"] is True
    assert main(args[:-1]) == 0 and "none in two splits" in capsys.readouterr().out


def test_dataset_report_names_a_corrupt_file(tmp_path, capsys):
    from tests import dataset_layouts as layouts

    root = layouts.aptos(tmp_path / "aptos")
    victim = sorted((root / "train_images").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    code = main(["dataset", "retinopathy", "--root", str(root), "--image-size", "16", "--cache-dir",
                 str(tmp_path / "cache")])
    assert code == 2 and victim.name in capsys.readouterr().err
