"""The per-cell searcher and the per-cell ASHA scheduler, driven directly with stand-in trials."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from sweep.scheduler import PerCellASHA
from sweep.searcher import CellPlan, CellSearcher, SweepState, grid_order
from sweep.spec import Dist

LR = {"lr": Dist(low=1e-4, high=1e-2)}


def plans(n_cells=3, budget=3, space=LR):
    return [CellPlan(f"cls/d/b/m{i}/frac=1/seed=0", space, budget,
                     {"train": {}, "method": {"knobs": {}}, "tracking": {"cell_key": f"cls/d/b/m{i}/frac=1/seed=0"}})
            for i in range(n_cells)]


def searcher(sampler="grid", **kw) -> CellSearcher:
    return CellSearcher(plans(**kw), SweepState(), "val/best_acc", "max", sampler=sampler, grid_points=3, seed=0)


def test_cells_are_interleaved_and_budgets_respected():
    s = searcher()
    configs = []
    for i in range(9):
        configs.append(s.suggest(f"t{i}"))
    cells = [c["tracking"]["cell_key"].split("/")[3] for c in configs]
    assert cells == ["m0", "m1", "m2"] * 3
    assert s.suggest("t9") == Searcher.FINISHED
    keys = [c["tracking"]["trial_key"] for c in configs]
    assert len(set(keys)) == 9 and keys[0].endswith("/trial=0") and keys[3].endswith("/trial=1")


def test_grid_sampler_covers_the_log_grid_centre_first():
    s = searcher(n_cells=1)
    lrs = [s.suggest(f"t{i}")["train"]["lr"] for i in range(3)]
    assert lrs == [1e-3, 1e-4, 1e-2]
    assert grid_order({"lr": Dist(choices=[1, 2, 3, 4])}, 3) == [{"lr": 2}, {"lr": 3}, {"lr": 1}, {"lr": 4}]


def test_each_cell_has_its_own_study_and_results_go_to_it():
    s = searcher(sampler="tpe", n_cells=2, budget=4)
    for i in range(8):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", {"val/best_acc": 0.9})
    s.on_trial_complete("t1", {"val/best_acc": 0.1})
    s.on_trial_complete("t2", None, error=True)
    s.on_trial_complete("t3", {"val/best_acc": float("nan")})
    studies = s.state.studies
    assert set(studies) == {p.key for p in plans(n_cells=2)}
    first, second = (studies[k] for k in sorted(studies))
    assert [t.value for t in first.trials if t.value is not None] == [0.9]
    assert [t.value for t in second.trials if t.value is not None] == [0.1]
    assert s.state.trials["t2"].status == "failed" and s.state.trials["t3"].status == "failed"
    s.on_trial_complete("t2", {"val/best_acc": 0.5})  # an errored trial resumed later: no second verdict
    assert s.state.trials["t2"].status == "finished"


def test_save_restore_continues_identically(tmp_path):
    a = searcher(sampler="tpe", n_cells=2, budget=5)
    for i in range(4):
        a.suggest(f"t{i}")
        a.on_trial_complete(f"t{i}", {"val/best_acc": 0.5 + i / 10})
    a.save(str(tmp_path / "searcher.pkl"))
    expected = [a.suggest(f"u{i}") for i in range(6)]

    b = searcher(sampler="tpe", n_cells=2, budget=5)
    shared = b.state
    b.restore(str(tmp_path / "searcher.pkl"))
    assert b.state is shared  # restored in place: the scheduler keeps seeing the same object
    assert [b.suggest(f"u{i}") for i in range(6)] == expected


# -- the per-cell scheduler ---------------------------------------------------------------------------------


@dataclass
class StubTrial:
    trial_id: str
    cell: str
    status: str = "RUNNING"
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.config = {"tracking": {"cell_key": self.cell, "trial_key": f"{self.cell}/trial={self.trial_id}"}}


def scheduler(state=None) -> PerCellASHA:
    return PerCellASHA(state or SweepState(), "val/best_acc", "max", max_t=9, grace_period=1, reduction_factor=3)


def report(sched, trial, epoch, value):
    return sched.on_trial_result(None, trial, {"epoch": epoch, "val/best_acc": value})


def test_cells_on_different_scales_never_stop_each_other():
    sched = scheduler()
    easy = [StubTrial(f"e{i}", "easy") for i in range(4)]
    hard = [StubTrial(f"h{i}", "hard") for i in range(4)]
    for t in easy + hard:
        sched.on_trial_add(None, t)
    for t, v in zip(easy, [0.95, 0.96, 0.97, 0.98], strict=True):
        assert report(sched, t, 1, v) == TrialScheduler.CONTINUE
    # The hard cell's scores are all far below the easy cell's: a shared ASHA would stop them all.
    decisions = [report(sched, t, 1, v) for t, v in zip(hard, [0.10, 0.12, 0.14, 0.16], strict=True)]
    assert decisions == [TrialScheduler.CONTINUE] * 4  # each beats its own cell's earlier trials

    # Within a cell, a clearly worse trial is stopped, and recorded as stopped early.
    late = StubTrial("h9", "hard")
    sched.on_trial_add(None, late)
    assert report(sched, late, 1, 0.01) == TrialScheduler.STOP
    assert sched.state.stopped_early == {"hard/trial=h9"}


def test_reaching_max_t_is_not_an_early_stop():
    sched = scheduler()
    t = StubTrial("a", "c")
    sched.on_trial_add(None, t)
    assert report(sched, t, 9, 0.5) == TrialScheduler.STOP
    assert sched.state.stopped_early == set()


def test_rung_records_survive_a_restore_through_the_searcher(tmp_path):
    state = SweepState()
    s = CellSearcher(plans(n_cells=1), state, "val/best_acc", "max")
    sched = scheduler(state)
    trials = [StubTrial(f"t{i}", "c") for i in range(3)]
    for t, v in zip(trials, [0.8, 0.9, 0.85], strict=True):
        sched.on_trial_add(None, t)
        report(sched, t, 1, v)
    s.save(str(tmp_path / "s.pkl"))

    # As after Tuner.restore: searcher and scheduler unpickled together from tuner.pkl (sharing one state object,
    # but with the state of the experiment's start), then the searcher restores the latest snapshot in place.
    start_state = SweepState()
    fresh_s, fresh_sched = pickle.loads(pickle.dumps((CellSearcher(plans(n_cells=1), start_state, "val/best_acc",
                                                                   "max"), scheduler(start_state))))
    assert fresh_s.state is fresh_sched.state
    fresh_s.restore(str(tmp_path / "s.pkl"))
    newcomer = StubTrial("t9", "c")
    fresh_sched.on_trial_add(None, newcomer)
    assert report(fresh_sched, newcomer, 1, 0.5) == TrialScheduler.STOP  # compared with the restored rung
    restored_rung = fresh_s.state.asha["c"]._brackets[0]._rungs[-1][1]
    assert {"t0", "t1", "t2", "t9"} <= set(restored_rung)
