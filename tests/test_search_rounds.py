"""A cell's search finishes its own job (sweep/tune/rounds.py): the learning-rate range widens until the chosen
trial is inside it, a stability edge is told apart, and a chosen trial still improving runs again longer.

The searcher and the synchronous-halving scheduler are driven through a stand-in of Tune's loop (the calls Tune
makes, in its order), on objectives whose best learning rate is known by construction."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from sweep.plan.spec import DEFAULT_SPEC, Dist, SpecError
from sweep.tune import rounds
from sweep.tune.scheduler import PerCellASHA, PerCellHalving
from sweep.tune.searcher import CellPlan, CellSearcher
from sweep.tune.state import SweepState
from tests.conftest import load_spec

CELL = "cls/d/b/m/frac=1/seed=0"
MAX_T = 9


def bell(best_log10: float, tau: float = 3.0):
    """Validation score after `epoch` epochs: highest at lr = 10**best_log10, saturating over epochs."""
    def score(lr: float, epoch: int) -> float:
        final = 0.5 + 0.4 * math.exp(-((math.log10(lr) - best_log10) ** 2) / 0.8)
        return final * (1 - math.exp(-epoch / tau))
    return score


class Stub:
    """A Tune trial as the scheduler and searcher see it."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config, self.status, self.epoch = trial_id, config, "PENDING", 0

    def set_status(self, status: str) -> None:
        self.status = status


class Loop:
    """Tune's calls, in Tune's order: new trials from the searcher, the scheduler picks one to run, results go to
    the searcher then the scheduler, a stopped or finished trial completes (scheduler, then searcher)."""

    def __init__(self, searcher: CellSearcher, sched: PerCellHalving, objective, diverges=lambda lr: False,
                 reads_train: bool = False, val_images: int | None = None):
        """`reads_train`: the objective is given the trial's whole train config (every searched knob), not its
        learning rate. `val_images`: the validation images each report says its score was measured on."""
        self.searcher, self.sched, self.objective, self.diverges = searcher, sched, objective, diverges
        self.reads_train, self.val_images = reads_train, val_images
        self.trials: list[Stub] = []
        self.search_alg = SimpleNamespace(is_finished=lambda: self.finished, searcher=searcher)
        self.finished, self.epochs, self.runs = False, 0, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):  # a paused or pending trial, stopped by the scheduler
        self.sched.on_trial_remove(self, trial)
        self.searcher.on_trial_complete(trial.trial_id)
        trial.status = "TERMINATED"

    def _ask(self) -> None:
        while not self.finished:
            config = self.searcher.suggest(f"t{len(self.trials)}")
            if config == Searcher.FINISHED:
                self.finished = True
            elif config is None:
                return
            else:
                trial = Stub(f"t{len(self.trials)}", config)
                self.trials.append(trial)
                self.runs.append(config["tracking"]["trial_key"])  # each new trial opens one MLflow run
                self.sched.on_trial_add(self, trial)

    def run(self, until=None) -> None:
        while True:
            self._ask()
            trial = self.sched.choose_trial_to_run(self)
            if trial is None:
                assert self.finished, "nothing runs, yet the searcher is not finished: a deadlock"
                assert all(t.status == "TERMINATED" for t in self.trials)
                return
            trial.status = "RUNNING"
            while trial.status == "RUNNING":
                if until is not None and until(self):
                    return  # the driver is killed: this trial was running
                trial.epoch += 1
                self.epochs += 1
                lr, epochs = trial.config["train"]["lr"], trial.config["train"].get("epochs", MAX_T)
                if self.diverges(lr):
                    result = {"epoch": trial.epoch, "score": float("nan"), "failed": 1}
                else:
                    value = self.objective(trial.config["train"] if self.reads_train else lr, trial.epoch)
                    result = {"epoch": trial.epoch, "score": value, "val/best_loss": 1 - value}
                    if self.val_images:
                        result["val_images"] = self.val_images
                self.searcher.on_trial_result(trial.trial_id, result)
                decision = self.sched.on_trial_result(self, trial, result)
                if decision == TrialScheduler.PAUSE:
                    trial.status = "PAUSED"
                elif decision == TrialScheduler.STOP or result.get("failed") or trial.epoch >= epochs:
                    self.sched.on_trial_complete(self, trial, result)
                    self.searcher.on_trial_complete(trial.trial_id, result)
                    trial.status = "TERMINATED"


def make(space=None, budget=3, state=None, **rules) -> tuple[CellSearcher, PerCellHalving]:
    state = state or SweepState()
    plan = CellPlan(CELL, space or {"lr": Dist(low=1e-4, high=1e-2)}, budget,
                    {"train": {"epochs": rules.pop("epochs", MAX_T)}, "method": {"knobs": {}},
                     "tracking": {"cell_key": CELL}})
    rules = {"extend_range": True, "max_extensions": 2, "max_epoch_doublings": 0, **rules}
    searcher = CellSearcher(cells=[plan], state=state, cell_by_cell=True, **rules)
    sched = PerCellHalving(state=state, budgets={CELL: budget}, max_t=MAX_T, grace_period=1, reduction_factor=3)
    return searcher, sched


def outcome(loop: Loop) -> tuple[float, list[float], rounds.CellSearch]:
    state = loop.searcher.state
    search = state.search[CELL]
    records = [state.trials[t] for t in search.trial_ids]
    best = rounds.chosen(records)
    return best.params["lr"], sorted({r.params["lr"] for r in records}), search


def test_a_cell_best_beyond_its_high_edge_extends_until_the_choice_is_inside():
    loop = Loop(*make(), objective=bell(-1))  # best at 0.1, the range 1e-4..1e-2
    loop.run()
    lr, tried, search = outcome(loop)
    assert lr == pytest.approx(0.1)  # the known best
    assert tried == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0])  # one decade at a time, at the grid's step
    assert tried[0] < lr < tried[-1] and search.edge == rounds.INTERIOR
    assert [r.kind for r in search.rounds] == ["initial", "high", "high"]
    assert len(loop.runs) == len(set(loop.runs)) == 5  # earlier trials never rerun: one run per trial


@pytest.mark.parametrize("sampler", ["tpe", "qmc"])
def test_other_samplers_widen_the_distribution_that_way(sampler):
    loop = Loop(*make(budget=4, sampler=sampler, max_extensions=1), objective=bell(-1))
    loop.run()
    state = loop.searcher.state
    by_round = [[r.params["lr"] for r in state.trials.values() if r.round == i] for i in range(2)]
    edge = max(by_round[0])
    assert edge < min(by_round[1]) and max(by_round[1]) <= 10 * edge * (1 + 1e-9)  # the decade beyond the edge
    assert len(by_round[1]) == 2  # 4 planned over 2 decades: 2 a decade
    assert [r.kind for r in state.search[CELL].rounds] == ["initial", "high"]


def test_a_cell_best_below_its_low_edge_extends_downwards():
    loop = Loop(*make(), objective=bell(-5))
    loop.run()
    lr, tried, search = outcome(loop)
    assert lr == pytest.approx(1e-5) and tried == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    assert search.edge == rounds.INTERIOR and [r.kind for r in search.rounds] == ["initial", "low", "low"]


def test_diverging_larger_learning_rates_are_a_stability_edge_not_extended():
    loop = Loop(*make(), objective=bell(0), diverges=lambda lr: lr > 5e-3)  # would be best at 1.0, unstable
    loop.run()
    lr, tried, search = outcome(loop)
    assert lr == pytest.approx(1e-3) and tried == pytest.approx([1e-4, 1e-3, 1e-2])
    assert search.edge == rounds.STABILITY and search.note == "stability edge: larger learning rates diverged"
    assert len(search.rounds) == 1 and loop.searcher.suggest("late") == Searcher.FINISHED


@pytest.mark.parametrize("rules, tried, note", [
    ({"max_extensions": 1}, [1e-4, 1e-3, 1e-2, 0.1], "after 1 extension round(s)"),
    ({"lr_limits": (1e-6, 0.05)}, [1e-4, 1e-3, 1e-2], "at the limit 0.05"),
    ({"extend_range": False}, [1e-4, 1e-3, 1e-2], "extension off"),
])
def test_lr_limits_and_max_extensions_hold(rules, tried, note):
    # Best beyond every limit: the score rises 0.05 a decade (0.03 at the first rung), a trend, not a flat range.
    rising = lambda lr, epoch: (0.7 + 0.05 * math.log10(lr)) * (1 - math.exp(-epoch))  # noqa: E731
    loop = Loop(*make(**rules), objective=rising)
    loop.run()
    lr, got, search = outcome(loop)
    assert got == pytest.approx(tried) and lr == pytest.approx(tried[-1])
    assert search.edge == rounds.AT_HIGH and note in search.note


def test_a_flat_range_extends_up_and_says_so():
    # Far below the best, every learning rate scores the same: the tie-break picks the lowest (trial key order
    # after equal loss), yet the range must widen where training signal is, upwards.
    flat = lambda lr, epoch: (0.6 if lr < 3e-4 else 0.9) * (1 - math.exp(-epoch / 3))  # noqa: E731
    loop = Loop(*make(space={"lr": Dist(low=1e-6, high=1e-4)}, max_extensions=1), objective=flat)
    loop.run()
    lr, tried, search = outcome(loop)
    assert search.rounds[1].kind == "high" and "flat range" in search.rounds[1].why
    assert tried == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3]) and lr == pytest.approx(1e-3)


def almost_flat(lr: float, epoch: int) -> float:
    """0.01 per decade: a third of an image on 39 validation images, equal within their noise."""
    return (0.7 + 0.01 * math.log10(lr)) * (1 - math.exp(-epoch))


def flat_search(low: float, high: float) -> tuple[list[float], rounds.CellSearch]:
    loop = Loop(*make(space={"lr": Dist(low=low, high=high)}, max_extensions=2), objective=almost_flat,
                val_images=39)
    loop.run()
    _, tried, search = outcome(loop)
    return tried, search


def test_a_range_still_flat_after_an_extension_ends_flat_not_at_an_edge():
    # Each flat round extends up while it may, and the search ends "flat", not at the high edge.
    tried, search = flat_search(1e-4, 1e-2)
    assert [r.kind for r in search.rounds] == ["initial", "high", "high"]
    assert tried == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert search.edge == rounds.FLAT and "flat range" in search.note and "0.0001..1" in search.note


def test_a_flat_range_at_the_learning_rate_limit_ends_flat():
    # Linear probing's range 1e-2..1 under lr_limits' 1.0: flat, and nothing higher may be tried.
    tried, search = flat_search(1e-2, 1.0)
    assert tried == pytest.approx([1e-2, 1e-1, 1.0]) and [r.kind for r in search.rounds] == ["initial"]
    assert search.edge == rounds.FLAT and "at the limit 1 (search.lr_limits)" in search.note


def test_the_same_scores_on_a_large_validation_set_are_a_high_edge():
    # The same 0.01 per decade is a trend on a validation set where a score moves by less than that: extended to
    # max_extensions and left at the high edge, as before noise counted.
    rising = lambda lr, epoch: (0.7 + 0.03 * math.log10(lr)) * (1 - math.exp(-epoch))  # noqa: E731
    loop = Loop(*make(space={"lr": Dist(low=1e-4, high=1e-2)}, max_extensions=2), objective=rising,
                val_images=20_000)
    loop.run()
    _, tried, search = outcome(loop)
    assert tried == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0]) and search.edge == rounds.AT_HIGH


@pytest.mark.parametrize("images, doubled", [(None, True), (39, False), (20_000, True)])
def test_still_improving_by_less_than_the_validation_noise_is_converged(images, doubled):
    # bell(-1, tau=3) at its best lr ends 0.855 at epoch 9 (0.9 (1 - exp(-3))) and rose 0.042 over its last two
    # epochs (0.9 (exp(-7/3) - exp(-3))): more than the 0.01 floor and one standard error on 20,000 images
    # (0.0025), less than one on 39 images, sqrt(0.855 x 0.145 / 39) = 0.056.
    searcher, sched = make(space={"lr": Dist(low=1e-2, high=1.0)}, max_epoch_doublings=1)
    loop = Loop(searcher, sched, objective=bell(-1, tau=3), val_images=images)
    loop.run()
    kinds = [r.kind for r in outcome(loop)[2].rounds]
    assert kinds == (["initial", "doubling"] if doubled else ["initial"])


def test_score_tolerance_is_one_standard_error_of_the_validation_score():
    from trainables.contract import score_tolerance

    assert score_tolerance(0.7, 39) == pytest.approx(math.sqrt(0.7 * 0.3 / 39))  # 0.0734
    assert score_tolerance(0.5, 100) == pytest.approx(0.05)
    assert score_tolerance(0.9, 1_000_000) == 0.01  # the floor where the set is large
    assert score_tolerance(0.9, None) == 0.01 and score_tolerance(None, 39, floor=0.02) == 0.02


def test_the_new_round_is_halved_against_the_earlier_rounds_recorded_scores():
    # 8 grid points per range; the extension adds 4 (one decade at the step 10**(2/7)). At the first rung the 4
    # new trials are ranked among all 12 recorded there: the best ceil(12/3) = 4 of them go on.
    loop = Loop(*make(space={"lr": Dist(low=1e-4, high=1e-2, points=8)}, budget=8, max_extensions=1),
                objective=bell(-1.5))
    loop.run()
    state = loop.searcher.state
    first, second = state.halving[CELL], state.halving[f"{CELL}#round=1"]
    pool = {**first.values[1], **second.values[1]}
    top4 = set(sorted(pool, key=lambda k: -pool[k][0])[:4])
    assert second.promoted[1] == top4 & set(second.values[1])
    assert first.promoted[1] == set(sorted(first.values[1], key=lambda k: -first.values[1][k][0])[:3])
    lr, tried, _ = outcome(loop)
    best_tried = min(tried, key=lambda x: abs(math.log10(x) + 1.5))
    assert lr == pytest.approx(best_tried)  # the best of every round, under the one rule


def test_a_driver_restart_mid_round_reruns_nothing_and_completes_the_round(tmp_path):
    space = {"lr": Dist(low=1e-4, high=1e-2, points=5)}  # step 10**0.5: an extension adds two points a decade
    searcher, sched = make(space=space, budget=5)
    loop = Loop(searcher, sched, objective=bell(-1))

    def mid_round(lp: Loop) -> bool:  # a trial of the first extension round ended, another is running
        ours = lp.trials[5:]
        return any(t.status == "TERMINATED" for t in ours) and any(t.status == "RUNNING" for t in ours)

    loop.run(until=mid_round)
    assert len(searcher.state.search[CELL].rounds) == 2 and mid_round(loop)
    searcher.save(str(tmp_path / "searcher.pkl"))
    # As Tuner.restore: searcher and scheduler unpickled from the experiment's start, the snapshot restored in
    # place, every unended trial handed back pending (it resumes from its checkpoint: its epochs so far stand).
    start = SweepState()
    fresh_searcher, fresh_sched = pickle.loads(pickle.dumps(make(space=space, budget=5, state=start)))
    fresh_searcher.restore(str(tmp_path / "searcher.pkl"))
    resumed = Loop(fresh_searcher, fresh_sched, objective=bell(-1))
    resumed.trials, resumed.runs = loop.trials, loop.runs
    for t in resumed.trials:
        if t.status != "TERMINATED":
            t.status = "PENDING"
        fresh_sched.on_trial_add(resumed, t)
    resumed.run()
    lr, tried, search = outcome(resumed)
    assert len(resumed.runs) == len(set(resumed.runs))  # nothing handed out twice: one run per trial
    # The round completed (0.1 at its top: one more round), and 0.1 ended inside.
    expected = [1e-4, 3.162e-4, 1e-3, 3.162e-3, 1e-2, 3.162e-2, 0.1, 0.3162, 1.0]
    assert tried == pytest.approx(expected, rel=1e-3) and len(resumed.runs) == 9
    assert lr == pytest.approx(0.1) and search.edge == rounds.INTERIOR


def test_a_chosen_trial_still_improving_runs_once_with_twice_the_epochs():
    searcher, sched = make(space={"lr": Dist(low=1e-2, high=1.0)}, max_epoch_doublings=1)
    loop = Loop(searcher, sched, objective=bell(-1, tau=6))  # best inside; at 9 epochs still rising
    loop.run()
    lr, _, search = outcome(loop)
    assert [r.kind for r in search.rounds] == ["initial", "doubling"]
    doubled = [t for t in loop.trials if t.config["tracking"]["tags"]["round_kind"] == "doubling"]
    assert len(doubled) == 1 and doubled[0].config["train"]["epochs"] == 2 * MAX_T
    assert doubled[0].epoch == 2 * MAX_T  # no scheduler stopped it at the cell's rungs or at max_t
    assert doubled[0].config["train"]["lr"] == pytest.approx(0.1) == lr
    assert rounds.describe(search, [searcher.state.trials[t] for t in search.trial_ids])["search"].endswith(
        "epochs 9 -> 18")


def test_a_converged_chosen_trial_is_not_run_again():
    searcher, sched = make(space={"lr": Dist(low=1e-2, high=1.0)}, max_epoch_doublings=1)
    loop = Loop(searcher, sched, objective=bell(-1, tau=0.5))  # flat long before epoch 9
    loop.run()
    assert [r.kind for r in outcome(loop)[2].rounds] == ["initial"] and len(loop.trials) == 3


def with_weight_decay(best_lr_log10: float, best_wd_log10: float):
    """A score with a bell in the learning rate and a smaller one in the weight decay (best at 10**best_wd_log10)."""
    def score(train: dict, epoch: int) -> float:
        lr, wd = math.log10(train["lr"]), math.log10(train["weight_decay"])
        final = 0.5 + 0.3 * math.exp(-((lr - best_lr_log10) ** 2) / 0.8) + 0.1 * math.exp(-((wd - best_wd_log10) ** 2) / 0.8)
        return final * (1 - math.exp(-epoch / 3))
    return score


LR_WD = {"lr": Dist(low=1e-4, high=1e-2), "weight_decay": Dist(low=1e-4, high=1e-2)}  # a 3 x 3 grid


def weight_decays(loop: Loop) -> tuple[float, list[float], dict[str, str]]:
    search = loop.searcher.state.search[CELL]
    records = [loop.searcher.state.trials[t] for t in search.trial_ids]
    return (rounds.chosen(records).params["weight_decay"], sorted({r.params["weight_decay"] for r in records}),
            rounds.describe(search, records))


def test_a_searched_weight_decay_at_its_top_edge_is_reported_not_extended():
    loop = Loop(*make(space=LR_WD, budget=9), objective=with_weight_decay(-3, 0), reads_train=True)  # wd best at 1
    loop.run()
    lr, _, search = outcome(loop)
    wd, wds, described = weight_decays(loop)
    assert lr == pytest.approx(1e-3) and search.edge == rounds.INTERIOR  # the learning rate is inside
    assert wd == pytest.approx(1e-2) and wds == pytest.approx([1e-4, 1e-3, 1e-2])
    assert search.knob_edges == {"weight_decay": "high"}
    assert [r.kind for r in search.rounds] == ["initial"] and len(loop.runs) == 9  # no round for a knob's edge
    assert described["search_knob_edges"] == "weight_decay high"
    assert described["search"] == "lr 0.0001..0.01, weight_decay at its high edge"


def test_a_searched_weight_decay_inside_its_range_is_not_reported():
    loop = Loop(*make(space=LR_WD, budget=9), objective=with_weight_decay(-3, -3), reads_train=True)
    loop.run()
    wd, _, described = weight_decays(loop)
    assert wd == pytest.approx(1e-3) and loop.searcher.state.search[CELL].knob_edges == {}
    assert described["search_knob_edges"] == "" and "weight_decay" not in described["search"]


def test_with_a_weight_decay_at_its_edge_the_learning_rate_still_extends_as_alone():
    """The learning rate best at 0.1 (beyond 1e-2), the weight decay at its top: the rounds widen the learning rate
    exactly as in test_a_cell_best_beyond_its_high_edge_extends_until_the_choice_is_inside (each round one new
    learning rate, with every weight decay of the grid), and leave the weight decay's range as planned."""
    loop = Loop(*make(space=LR_WD, budget=9), objective=with_weight_decay(-1, 0), reads_train=True)
    loop.run()
    lr, tried, search = outcome(loop)
    wd, wds, described = weight_decays(loop)
    assert lr == pytest.approx(0.1) and tried == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0])
    assert [r.kind for r in search.rounds] == ["initial", "high", "high"] and search.edge == rounds.INTERIOR
    assert all(r.space["weight_decay"] == LR_WD["weight_decay"] for r in search.rounds)
    assert wds == pytest.approx([1e-4, 1e-3, 1e-2]) and wd == pytest.approx(1e-2)
    assert described["search"] == "lr 0.0001..1, +2 rounds high, weight_decay at its high edge"


@pytest.mark.parametrize("value, tried, edge", [
    (1e-2, [1e-4, 1e-3, 1e-2], "high"), (1e-4, [1e-4, 1e-3, 1e-2], "low"), (1e-3, [1e-4, 1e-3, 1e-2], ""),
    (16, [4, 8, 16], "high"),  # a LoRA rank searched over numeric choices
    (8, [8, 8], ""),  # one value tried: no range to be at the edge of
    (True, [True, False], ""), ("adam", ["adam", "sgd"], ""),  # choices without an order
])
def test_the_edge_check_every_knob_gets(value, tried, edge):
    from sweep.plan.grid import range_edge

    assert range_edge(value, tried) == edge


def test_one_definition_of_not_converged_for_the_rounds_and_the_report():
    from trainables import contract

    assert rounds.still_improving is contract.still_improving and rounds.FLAT_TOLERANCE == contract.SCORE_TOLERANCE


def test_still_improving_is_judged_on_the_best_so_far_over_the_last_epochs():
    rising = {e: 1 - math.exp(-e / 5) for e in range(1, 11)}  # +0.03 over its last two epochs
    assert rounds.still_improving(rising)
    assert not rounds.still_improving({e: 0.8 for e in range(1, 11)})
    # A dip at the end is not improvement: the best-so-far did not move.
    assert not rounds.still_improving({**{e: 0.8 for e in range(1, 9)}, 9: 0.7, 10: 0.75})
    assert not rounds.still_improving({1: 0.1, 2: 0.5})  # too short to tell


def test_asha_lets_a_doubled_trial_run_past_max_t():
    sched = PerCellASHA(state=SweepState(), max_t=3, grace_period=1, reduction_factor=3)
    trial = Stub("d", {"tracking": {"cell_key": CELL, "trial_key": f"{CELL}/trial=3",
                                    "tags": {"round": "1", "round_kind": "doubling"}}})
    sched.on_trial_add(None, trial)
    assert [sched.on_trial_result(None, trial, {"epoch": e, "score": 0.1}) for e in (1, 3, 5)] == ["CONTINUE"] * 3


@pytest.mark.parametrize("search, says", [
    ({"lr_limits": [1.0, 1e-6]}, "0 < low < high"),
    ({"max_extensions": -1}, "max_extensions"),
    ({"max_epoch_doublings": 1.5}, "max_epoch_doublings"),
])
def test_spec_checks_the_search_rounds_settings(search, says):
    overrides = [f"search.{k}={v}" for k, v in search.items()]
    with pytest.raises(SpecError, match=says):
        load_spec(DEFAULT_SPEC, overrides)
    assert load_spec(DEFAULT_SPEC).search.lr_limits == (1e-6, 1.0)  # the defaults are valid


def simulated_cell(tmp_path, extra: str = "") -> tuple[Path, float]:
    """One cell of the simulated task, its best learning rate known by construction, started with its range one to
    three decades too low and every trial run to the end (fifo: the worst case); `extra`: more search settings."""
    from trainables.simulated import curve

    cell_key = "sim/synthetic/test_resnet/linear/frac=1/seed=0"
    best = max((-6 + i / 1000 for i in range(5001)), key=lambda x: curve(cell_key, 10**x, 1000))
    spec = tmp_path / "rounds.yaml"
    spec.write_text(
        "name: rounds\ntask: simulated\n"
        "datasets: [{name: synthetic}]\nbackbones: [{name: test_resnet, weights: random}]\nmethods: [linear]\n"
        "image_size: 16\ntrain: {epochs: 4, epoch_seconds: 0}\n"
        f"search: {{sampler: grid, trials_per_cell: 3, lr_limits: [1.0e-10, 1.0], max_extensions: 2,{extra}\n"
        f"         max_epoch_doublings: 1, spaces: {{linear: {{lr: {{low: {10 ** (best - 3):.4g}, "
        f"high: {10 ** (best - 1):.4g}}}}}}}}}\n"
        "scheduler: {type: fifo}\n"
        "resources: {cpus_per_trial: 0.5, num_cpus: 1}\n")
    return spec, best


def trials_ran(storage: Path, best: float) -> list[tuple]:
    """(decades from the best learning rate, round kind, epochs planned, epochs logged) of every trial run."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rounds").experiment_id
    trials = client.search_runs([experiment], "tags.role = 'trial'")
    return sorted((round(math.log10(float(r.data.params["train.lr"])) - best), r.data.tags["round_kind"],
                   int(r.data.params["train.epochs"]), len(client.get_metric_history(r.info.run_id, "epoch")))
                  for r in trials)


@pytest.mark.slow
def test_simulated_sweep_runs_the_rounds_the_dry_run_bounds(tmp_path):
    """It extends up twice (the second round ends with the best inside), then its chosen trial, still rising at
    epoch 4, runs once more with 8. The dry run's bound is that worst case, derived here by hand: 2 rounds x 1
    trial x 4 epochs + 1 trial x 8."""
    from mlflow import MlflowClient

    from tests.conftest import launch

    spec, best = simulated_cell(tmp_path)
    dry = launch("--config", str(spec), "--dry-run").stdout
    assert "add between 0 and 3 trials and 16 trial-epochs (at most 6 trials)" in dry, dry
    storage = tmp_path / "store"
    result = launch("--config", str(spec), "--storage", str(storage))
    assert "1/1 cells complete" in result.stdout and "[round 1]" in result.stdout, result.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rounds").experiment_id
    trials = client.search_runs([experiment], "tags.role = 'trial'")
    keys = [r.data.tags["trial_key"] for r in trials]
    assert len(keys) == len(set(keys)) == 6  # one run per trial: no earlier trial rerun
    assert trials_ran(storage, best) == [
        (-3, "initial", 4, 4), (-2, "initial", 4, 4), (-1, "initial", 4, 4),
        (0, "doubling", 8, 8), (0, "high", 4, 4), (1, "high", 4, 4)]
    (cell,) = client.search_runs([experiment], "tags.role = 'cell'")
    assert cell.data.tags["search_edge"] == "interior"
    assert ", +2 rounds high, epochs 4 -> 8" in cell.data.tags["search"]
    assert ", +2 rounds high, epochs 4 -> 8" in result.stdout  # the launcher's table too
    assert "finished 8/8 epochs" in result.stdout and "/4 epochs" in result.stdout  # each trial its own length
    (doubled,) = [r for r in trials if r.data.tags["round_kind"] == "doubling"]
    assert cell.data.tags["chosen_trial"] == doubled.data.tags["trial_key"]  # 8 epochs beat 4 on validation


@pytest.mark.parametrize("cap, kinds, edge", [
    (None, ["initial", "high", "high"], rounds.INTERIOR),  # 27 + 9 + 9 trial-epochs at most: no cap is needed
    (45, ["initial", "high", "high"], rounds.INTERIOR),
    (36, ["initial", "high"], rounds.AT_HIGH),  # 27 + 9 = 36: the second extension (9 more) does not fit
    (27, ["initial"], rounds.AT_HIGH),
])
def test_search_rounds_run_only_while_the_sweeps_cap_holds_them(cap, kinds, edge):
    """Best at 0.1, range 1e-4..1e-2: two extensions bring it inside. Each round costs at most trials x 9 epochs
    (the searcher's default round cost): the planned 3 trials 27, an extension of 1 trial 9."""
    loop = Loop(*make(max_trial_epochs=cap), objective=bell(-1))
    loop.run()
    lr, tried, search = outcome(loop)
    assert [r.kind for r in search.rounds] == kinds and search.edge == edge
    assert loop.epochs <= (cap or math.inf) and lr == pytest.approx(max(tried) if edge == rounds.AT_HIGH else 0.1)
    if cap in (27, 36):
        assert search.note.endswith(f"not widened: search.max_trial_epochs ({cap}) would be exceeded")


def test_a_doubling_that_does_not_fit_the_cap_is_not_run_and_says_so():
    searcher, sched = make(space={"lr": Dist(low=1e-2, high=1.0)}, max_epoch_doublings=1, max_trial_epochs=44)
    loop = Loop(searcher, sched, objective=bell(-1, tau=6))  # the doubling (1 trial x 18 epochs) needs 27 + 18
    loop.run()
    search = outcome(loop)[2]
    assert [r.kind for r in search.rounds] == ["initial"] and len(loop.trials) == 3
    assert search.note == "epochs not doubled: search.max_trial_epochs (44) would be exceeded"


def test_a_cap_below_what_the_planned_cells_take_is_refused_before_any_work():
    from sweep.plan.validate import make_plan

    # The default spec's grid under synchronous halving: its planned cells' most, stated in the message.
    spec = load_spec(DEFAULT_SPEC)
    plan = make_plan(spec, DEFAULT_SPEC, None, allow_missing=True)
    planned = sum(spec.scheduler.most_trial_epochs(c.budget, plan.max_epochs) for c in plan.cells)
    with pytest.raises(SpecError, match=f"max_trial_epochs \\({planned - 1:,}\\) is less than the {planned:,}"):
        make_plan(load_spec(DEFAULT_SPEC, [f"search.max_trial_epochs={planned - 1}"]), DEFAULT_SPEC, None,
                  allow_missing=True)
    assert make_plan(load_spec(DEFAULT_SPEC, [f"search.max_trial_epochs={planned}"]), DEFAULT_SPEC, None,
                     allow_missing=True).planned_trial_epochs == planned


@pytest.mark.parametrize("kind, trials, max_t, most", [
    ("halving", 3, 4, 3 * 2 + 1 * 2),  # grace 2, eta 3: all three to epoch 2, the best to 4
    ("halving", 1, 8, 8),  # a doubling's single trial runs to its end
    ("asha", 3, 4, 12),  # asynchronous: every early arrival may go on
    ("fifo", 3, 4, 12),
])
def test_the_most_a_round_can_take_under_each_scheduler(kind, trials, max_t, most):
    from sweep.plan.spec import SchedulerSpec

    assert SchedulerSpec(type=kind, grace_period=2, reduction_factor=3).most_trial_epochs(trials, max_t) == most


@pytest.mark.slow
def test_a_capped_simulated_sweep_stops_adapting_where_its_cap_would_be_passed(tmp_path):
    """The same cell with search.max_trial_epochs 16: the planned 3 trials x 4 epochs (12) and one extension of
    1 x 4 fit; the second extension (4 more) does not, so the cell ends at its high edge, saying why, and no
    doubling runs: 16 trial-epochs in all, as the dry run promised."""
    from mlflow import MlflowClient

    from tests.conftest import launch

    spec, best = simulated_cell(tmp_path, " max_trial_epochs: 16,")
    dry = launch("--config", str(spec), "--dry-run").stdout
    assert "Capped: search.max_trial_epochs 16: the sweep takes at most 16 trial-epochs in all (12 for" in dry, dry
    storage = tmp_path / "store"
    result = launch("--config", str(spec), "--storage", str(storage))
    assert "1/1 cells complete" in result.stdout, result.stdout[-3000:]
    ran = trials_ran(storage, best)
    assert ran == [(-3, "initial", 4, 4), (-2, "initial", 4, 4), (-1, "initial", 4, 4), (0, "high", 4, 4)]
    assert sum(epochs for *_, epochs in ran) == 16
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    (cell,) = client.search_runs([client.get_experiment_by_name("rounds").experiment_id], "tags.role = 'cell'")
    assert cell.data.tags["search_edge"] == "high"
    assert "not widened: search.max_trial_epochs (16) would be exceeded" in cell.data.tags["search_note"]
    from sweep.report.cli import main as report

    assert report(["--name", "rounds", "--storage", str(storage), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "1 cells' searches were cut short by the sweep's cap (search.max_trial_epochs)" in text
