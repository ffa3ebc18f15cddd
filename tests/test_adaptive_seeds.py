"""Adaptive seeds (`seeds: {initial, max}`): which comparisons get another seed (sweep.results.seeds), and the
searcher's hook that walks the cells added (sweep.tune.searcher), on simulated predictions written to MLflow by
our own writers (tests.test_report.fake_sweep), without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.report import build as report
from sweep.results import comparisons, predictions, table
from sweep.results.scores import method_scores
from sweep.results.seeds import seeds_needed
from tests.test_report import fake_sweep
from trainables.simulated import simulated_predictions

IMAGES = 300
# Accuracy on the simulated test split (about 65% of it one class): bitfit a point above full (undecided on 300
# images: the 95% interval is several points wide), linear 11 points below it (decided from the first seeds, and
# above the majority class, so it learned).
ACCURACY = {"full": 0.85, "bitfit": 0.86, "linear": 0.74}


def _cell(method: str, seed: int) -> list[dict]:
    frame = simulated_predictions("d", "test", IMAGES, ACCURACY[method], f"{method}/seed={seed}", noise=0.3)
    right = (frame[["prob_0", "prob_1"]].to_numpy().argmax(1) == frame["label"].to_numpy())
    counts = np.bincount(frame["label"], minlength=2).tolist()
    return [{"lr": 1e-3, "val": ACCURACY[method], "test": float(right.mean()), "counts_val": [50, 50],
             "counts_test": counts, "predictions": frame}]


def _decide(uri: str, out, max_seeds: int):
    trials, cells = table.trials_table(uri, "s")
    chosen = table.chosen_trials(trials)
    found = predictions.load(uri, chosen["run_id"].tolist(), out)
    return seeds_needed(trials, cells, found, max_seeds), trials, chosen, found


def test_an_undecided_pair_gets_seeds_until_max_and_a_decided_one_gets_none(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)})
    rounds = []
    while True:
        decision, trials, chosen, found = _decide(uri, tmp_path / "cache", max_seeds=4)
        assert not decision.waiting
        if not decision.add:
            break
        rounds.append(sorted((line[-1], seed) for line, seed in decision.add.items()))
        fake_sweep(uri, "s", {("d", line[-1], 1.0, seed): _cell(line[-1], seed) for line, seed in decision.add.items()})
    # bitfit against full (also the best against the runner-up) is undecided: seeds 2 and 3 for both, then max.
    assert rounds == [[("bitfit", 2), ("full", 2)], [("bitfit", 3), ("full", 3)]]
    assert sorted(trials.groupby("method")["seed"].nunique().items()) == [("bitfit", 4), ("full", 4), ("linear", 2)]
    assert any("still undecided at 4 seeds, the most allowed" in why for why in decision.why)
    scores = method_scores(trials)
    final = comparisons.compare_cells(chosen, scores, found).set_index(["method", "reference"])
    assert final.loc[("linear", "full"), "verdict"] == "worse" and final.loc[("linear", "full"), "seeds"] == 2
    assert final.loc[("bitfit", "full"), "verdict"] == "undecided" and final.loc[("bitfit", "full"), "seeds"] == 4
    # The report says how many seeds each comparison took, and why.
    built = report.build(uri, "s", tmp_path / "out", formats=("md",), log_to_mlflow=False, adaptive=(2, 4))
    why = built.comparisons.set_index(["method", "reference"])["seeds_why"]
    assert why[("bitfit", "full")] == "2 added while undecided; still undecided at the most allowed"
    assert why[("linear", "full")] == "the initial 2: decided (worse)"
    assert "seeds: why" in (tmp_path / "out" / "report.md").read_text()


def test_a_comparison_with_a_cell_still_running_waits(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cells = {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)}
    cells[("d", "full", 1.0, 1)][0]["status"] = "running"
    fake_sweep(uri, "s", cells)
    decision, *_ = _decide(uri, tmp_path / "cache", max_seeds=4)
    assert decision.waiting and not decision.add  # full is in both comparisons: nothing is decided yet


def test_no_seed_beyond_max(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)})
    decision, *_ = _decide(uri, tmp_path / "cache", max_seeds=2)  # max = the initial seeds: nothing to add
    assert not decision.add and not decision.waiting
    assert any("still undecided at 2 seeds" in why for why in decision.why)


def test_the_extender_derives_the_same_added_cells_after_a_restart(tmp_path, capsys):
    """sweep.tune.adaptive.SeedExtender reads the results from MLflow: a fresh one (a restarted driver) returns the
    cells added so far, the ones already run included, and one seed more only where still undecided."""
    from sweep.plan.grid import expand
    from sweep.plan.spec import SweepSpec, load_method_spaces
    from sweep.tune.adaptive import SeedExtender

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    fake_sweep(uri, "s", {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)})
    spec = SweepSpec.model_validate({
        "name": "s", "datasets": [{"name": "d"}], "backbones": [{"name": "bb", "weights": "random"}],
        "methods": list(ACCURACY), "seeds": {"initial": 2, "max": 4}, "train": {"epochs": 4, "select_metric": "acc"},
        "search": {"sampler": "random", "trials_per_cell": 1}})
    cells = expand(spec, "cls", load_method_spaces(spec))

    def extender() -> SeedExtender:
        return SeedExtender("s", uri, (tmp_path / "artifacts").as_uri(), spec, cells, {}, str(tmp_path / "exp"),
                            rope=1.0, cache=str(tmp_path / "cache"))

    first = [c.key for c in extender()({}, True)]
    assert first == ["cls/d/bb/bitfit/frac=1/seed=2", "cls/d/bb/full/frac=1/seed=2"]
    assert "seed 2 added to both" in capsys.readouterr().out
    assert [c.key for c in extender()({}, True)] == first  # asked again: the same, no duplicates
    # The restarted driver has no new reason (the added cells have not run yet): it says what it continues.
    assert capsys.readouterr().out == "[adaptive seeds] 2 cell(s) added before the restart, continued\n"
    plan = extender()({}, True)[0]
    assert plan.base_config["tracking"]["cell_key"] == plan.key and plan.budget == 1
    fake_sweep(uri, "s", {("d", m, 1.0, 2): _cell(m, 2) for m in ("bitfit", "full")})
    again = [c.key for c in extender()({}, True)]
    assert sorted(again) == sorted([*first, "cls/d/bb/bitfit/frac=1/seed=3", "cls/d/bb/full/frac=1/seed=3"])


def test_the_searcher_walks_added_cells_waits_while_trials_run_and_resumes_without_duplicates(tmp_path):
    from ray.tune.search import Searcher

    from sweep.plan.spec import Dist
    from sweep.tune.searcher import CellPlan, CellSearcher, SweepState

    def plan(key: str) -> CellPlan:
        return CellPlan(key, {"lr": Dist(low=1e-4, high=1e-2)}, 2, {"train": {}, "tracking": {"cell_key": key}})

    class AddSeedOne:
        """Stands in for SeedExtender: once both seed-0 cells ended, a seed-1 cell for each (asked again, the same)."""

        def __call__(self, ended, fresh, room=None, round_cost=None):
            done = sum(key.startswith(("a/seed=0", "b/seed=0")) for key in ended)
            return [plan("a/seed=1"), plan("b/seed=1")] if done == 4 else []

    def searcher() -> CellSearcher:  # as Tune rebuilds it on --resume: the planned cells, then the saved state
        return CellSearcher(cells=[plan("a/seed=0"), plan("b/seed=0")], state=SweepState(), metric="score",
                            extend=AddSeedOne())

    s = searcher()
    keys = [s.suggest(f"t{i}")["tracking"]["trial_key"] for i in range(4)]
    assert s.suggest("t4") is None  # every planned trial is out and they run: wait, do not finish
    for i in range(4):
        s.on_trial_complete(f"t{i}", {"score": 0.5})
    keys.append(s.suggest("t4")["tracking"]["trial_key"])
    assert keys[-1] == "a/seed=1/trial=0"
    s.save(str(tmp_path / "searcher.pkl"))

    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    more = []
    while (config := resumed.suggest(f"u{len(more)}")) is not None:
        assert config != Searcher.FINISHED
        more.append(config["tracking"]["trial_key"])
    assert sorted(keys + more) == sorted({*keys, *more})  # no trial twice
    assert sorted(more) == ["a/seed=1/trial=1", "b/seed=1/trial=0", "b/seed=1/trial=1"]
    for i in range(3):
        resumed.on_trial_complete(f"u{i}", {"score": 0.5})
    resumed.on_trial_complete("t4", {"score": 0.5})
    assert resumed.suggest("last") == Searcher.FINISHED


def test_the_progress_counts_the_trials_of_added_cells(capsys):
    """Two planned cells of 2 trials: the progress says [k/4] until the searcher walks the two cells adaptive seeds
    add (2 trials each), then [k/8]: the lines do not count on past their total."""
    from types import SimpleNamespace

    from sweep.plan.spec import Dist
    from sweep.tune.callbacks import SweepProgress
    from sweep.tune.searcher import CellPlan, CellSearcher, SweepState

    def plan(key: str) -> CellPlan:
        return CellPlan(key, {"lr": Dist(low=1e-4, high=1e-2)}, 2, {"train": {}, "tracking": {"cell_key": key}})

    state = SweepState()
    planned = [plan("a/seed=0"), plan("b/seed=0")]
    searcher = CellSearcher(cells=planned, state=state, metric="score",
                            extend=lambda ended, fresh, *_: [plan("a/seed=1"), plan("b/seed=1")] if len(ended) == 4 else [])
    progress = SweepProgress(state, "sqlite://", "0", 4, "score", 4, frozenset(c.key for c in planned))
    for i in range(4):
        searcher.suggest(f"t{i}")
    assert progress.expected() == 4
    for i in range(4):
        searcher.on_trial_complete(f"t{i}", {"score": 0.5})
    searcher.suggest("t4")  # every planned trial ended: the extender adds two cells, the searcher walks them
    assert progress.expected() == 8
    ended = [SimpleNamespace(trial_id=f"t{i}", status="TERMINATED", config={"searched": {"lr": 1e-3}})
             for i in range(5)]
    progress._print(ended, "a/seed=1/trial=0", ended[4], "finished 4/4 epochs", {})
    assert capsys.readouterr().out.startswith("[5/8] a/seed=1/trial=0")


ADAPTIVE_SPEC = """name: adapt
task: simulated
datasets: [{name: synthetic, id: a}]
backbones: [{name: test_resnet, weights: random}]
methods: [full, bitfit, linear]
image_size: 16
seeds: {initial: 2, max: 4}
train: {epochs: 2, epoch_seconds: 0.01, test_images: 20, val_images: 20, method_effect: {linear: -0.3}}
search: {sampler: grid, trials_per_cell: 1}
scheduler: {type: fifo}
resources: {cpus_per_trial: 0.5}
"""


@pytest.mark.long
@pytest.mark.slow
def test_a_sweep_adds_seeds_where_undecided_and_resume_repeats_none(tmp_path):
    """On the simulated task (deterministic): on 20 test images bitfit against full stays undecided, so seeds 2 and
    3 are added to both, while linear (30 points below) is decided on seeds 0 and 1. The driver is killed once the
    first added seed is out; --resume adds the rest, and no trial runs twice."""
    from mlflow import MlflowClient

    from tests.conftest import LaunchedSweep, launch

    spec = tmp_path / "adapt.yaml"
    spec.write_text(ADAPTIVE_SPEC)
    storage = tmp_path / "store"
    args = ["--config", str(spec), "--storage", str(storage)]
    first = LaunchedSweep(args)
    assert first.wait_for(lambda: first.count(lambda line: line.startswith("[adaptive seeds]")) >= 1, timeout=300)
    first.kill()
    resumed = launch("--name", "adapt", "--storage", str(storage), "--resume")
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("adapt").experiment_id
    runs = client.search_runs([experiment], "tags.role = 'trial'", max_results=100)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)), "a trial ran twice"
    seeds = {}
    for r in runs:
        seeds.setdefault(r.data.tags["method"], set()).add(int(r.data.tags["seed"]))
    assert seeds == {"full": {0, 1, 2, 3}, "bitfit": {0, 1, 2, 3}, "linear": {0, 1}}
    assert all(r.data.tags["status"] == "finished" for r in runs)
    assert resumed.returncode == 0


def test_a_pair_with_a_seed_on_one_side_only_gets_that_seed_on_the_other(tmp_path):
    """A comparison counts the seeds both of its cells have: bitfit with seeds 0-2 against full with 0-1 is paired on
    two, so the next seed is full's seed 2 (not seed 3 for both, and not 'the most allowed' counted on bitfit's 3)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cells = {("d", m, 1.0, s): _cell(m, s) for m in ACCURACY for s in (0, 1)}
    cells[("d", "bitfit", 1.0, 2)] = _cell("bitfit", 2)
    fake_sweep(uri, "s", cells)
    decision, *_ = _decide(uri, tmp_path / "cache", max_seeds=3)
    assert decision.add == {("classification", "bb", "d", 1.0, "full"): 2}
    assert any("undecided at 2 paired seeds" in why and "seed 2 added to full" in why for why in decision.why)


def test_seeds_are_added_whole_comparisons_at_a_time_while_the_cap_holds_them():
    """Three undecided comparisons, each wanting seed 3 for its method and for full fine-tuning, every new cell
    costing at most 8 trial-epochs, 30 left under search.max_trial_epochs: A with full takes 16 (14 left), B
    shares full's new cell and takes 8 (6 left), C's 8 does not fit: C gets no seed, and says why."""
    from sweep.results.seeds import SeedDecision, within

    line = {m: ("cls", "b", "d", 1.0, m) for m in ("full", "a", "b", "c")}
    labels = [f"b d 1: {m} vs full" for m in ("a", "b", "c")]
    pairs = [(label, {line[m]: 3, line["full"]: 3},
              f"{label}: undecided at 3 paired seeds (95% CI [-1.0, +2.0]), seed 3 added to both")
             for label, m in zip(labels, ("a", "b", "c"), strict=True)]
    decision = SeedDecision(add={line[m]: 3 for m in line}, pairs=pairs,
                            why=[why for *_, why in pairs] + ["b d 1: e vs full: still undecided at 4 seeds, the most "
                                                              "allowed"])
    kept = within(decision, 30, lambda _: 8)
    assert kept.add == {line["a"]: 3, line["full"]: 3, line["b"]: 3}
    assert [label for label, *_ in kept.pairs] == ["b d 1: a vs full", "b d 1: b vs full"]
    refusal = "b d 1: c vs full: undecided, no seed added: 8 more trial-epochs would pass search.max_trial_epochs"
    assert kept.refused == [refusal] and refusal in kept.why
    assert sum("the most allowed" in w for w in kept.why) == 1 and sum("seed 3 added" in w for w in kept.why) == 2
    assert within(decision, 100, lambda _: 8).add == decision.add  # room for all: the decision as it was


@pytest.mark.slow
def test_a_capped_sweep_adds_only_the_seeds_its_cap_holds(tmp_path):
    """The same sweep without search rounds and with search.max_trial_epochs 16: 3 methods x 2 seeds x 1 trial x
    2 epochs take 12, bitfit against full stays undecided, and its seed 2 (one cell each side, 2 x 2 = 4) fits
    exactly; seed 3 would take 4 more, so the launcher says the comparison got none, and no cell ran past 16."""
    from mlflow import MlflowClient

    from tests.conftest import launch

    spec = tmp_path / "adapt.yaml"
    spec.write_text(ADAPTIVE_SPEC.replace("trials_per_cell: 1}",
                                          "trials_per_cell: 1, extend: false, max_epoch_doublings: 0, "
                                          "max_trial_epochs: 16}"))
    storage = tmp_path / "store"
    result = launch("--config", str(spec), "--storage", str(storage))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "bitfit vs full: undecided, no seed added: 4 more trial-epochs would pass search.max_trial_epochs" \
        in result.stdout, result.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("adapt").experiment_id], "tags.role = 'trial'")
    seeds = {}
    for r in runs:
        seeds.setdefault(r.data.tags["method"], set()).add(int(r.data.tags["seed"]))
    assert seeds == {"full": {0, 1, 2}, "bitfit": {0, 1, 2}, "linear": {0, 1}}
    assert sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs) == 16
