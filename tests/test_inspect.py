import json
from pathlib import Path

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
