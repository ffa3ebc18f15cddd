"""The per-cell searcher and the per-cell schedulers (async ASHA, synchronous halving), driven directly with
stand-in trials."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from sweep.plan.spec import Dist, halving_epochs
from sweep.tune.scheduler import PerCellASHA, PerCellHalving
from sweep.tune.searcher import CellPlan, CellSearcher, SweepState, grid_order

LR = {"lr": Dist(low=1e-4, high=1e-2)}


def plans(n_cells=3, budget=3, space=LR):
    return [CellPlan(f"cls/d/b/m{i}/frac=1/seed=0", space, budget,
                     {"train": {}, "method": {"knobs": {}}, "tracking": {"cell_key": f"cls/d/b/m{i}/frac=1/seed=0"}})
            for i in range(n_cells)]


def searcher(sampler="grid", cell_by_cell=False, **kw) -> CellSearcher:
    return CellSearcher(cells=plans(**kw), state=SweepState(), metric="val/best_acc", sampler=sampler, grid_points=3, seed=0,
                        cell_by_cell=cell_by_cell)


@pytest.mark.parametrize("cell_by_cell", [False, True])
def test_cells_are_interleaved_or_taken_in_turn_and_budgets_respected(cell_by_cell):
    s = searcher(cell_by_cell=cell_by_cell)
    configs = []
    for i in range(9):
        configs.append(s.suggest(f"t{i}"))
    cells = [c["tracking"]["cell_key"].split("/")[3] for c in configs]
    assert cells == (["m0"] * 3 + ["m1"] * 3 + ["m2"] * 3 if cell_by_cell else ["m0", "m1", "m2"] * 3)
    assert s.suggest("t9") == Searcher.FINISHED
    keys = sorted(c["tracking"]["trial_key"] for c in configs)
    assert len(set(keys)) == 9 and keys[0].endswith("m0/frac=1/seed=0/trial=0")


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

    def set_status(self, status: str) -> None:
        self.status = status


def scheduler(state=None) -> PerCellASHA:
    return PerCellASHA(state=state or SweepState(), metric="val/best_acc", max_t=9, grace_period=1,
                       reduction_factor=3)


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
    s = CellSearcher(cells=plans(n_cells=1), state=state, metric="val/best_acc")
    sched = scheduler(state)
    trials = [StubTrial(f"t{i}", "c") for i in range(3)]
    for t, v in zip(trials, [0.8, 0.9, 0.85], strict=True):
        sched.on_trial_add(None, t)
        report(sched, t, 1, v)
    s.save(str(tmp_path / "s.pkl"))

    # As after Tuner.restore: searcher and scheduler unpickled together from tuner.pkl (sharing one state object,
    # but with the state of the experiment's start), then the searcher restores the latest snapshot in place.
    start_state = SweepState()
    fresh_s, fresh_sched = pickle.loads(pickle.dumps((CellSearcher(cells=plans(n_cells=1), state=start_state, metric="val/best_acc"), scheduler(start_state))))
    assert fresh_s.state is fresh_sched.state
    fresh_s.restore(str(tmp_path / "s.pkl"))
    newcomer = StubTrial("t9", "c")
    fresh_sched.on_trial_add(None, newcomer)
    assert report(fresh_sched, newcomer, 1, 0.5) == TrialScheduler.STOP  # compared with the restored rung
    restored_rung = fresh_s.state.asha["c"].scheduler._brackets[0]._rungs[-1][1]
    assert {"t0", "t1", "t2", "t9"} <= set(restored_rung)


# -- synchronous successive halving per cell ----------------------------------------------------------------


class StubController:
    """What the scheduler uses of Tune's controller: the trials, and stopping one (as Tune does for a trial
    that is not running: the scheduler hears on_trial_remove, the searcher a completion without a result)."""

    def __init__(self, sched, trials, searcher=None, searcher_finished=False):
        self.sched, self.trials, self.searcher, self.stopped = sched, trials, searcher, []
        self.search_alg = SimpleNamespace(is_finished=lambda: searcher_finished)

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.sched.on_trial_remove(self, trial)
        if self.searcher:
            self.searcher.on_trial_complete(trial.trial_id)
        trial.status = "TERMINATED"
        self.stopped.append(trial.config["tracking"]["trial_key"])


def halving(budgets, max_t=9, state=None) -> PerCellHalving:
    return PerCellHalving(state=state or SweepState(), budgets=budgets, metric="val/best_acc", max_t=max_t, grace_period=1,
                          reduction_factor=3)


def step(sched, ctl, trial, epoch, value, **extra):
    decision = sched.on_trial_result(ctl, trial, {"epoch": epoch, "val/best_acc": value, "val/best_loss": 1 - value,
                                                  **extra})
    trial.status = {TrialScheduler.PAUSE: "PAUSED", TrialScheduler.STOP: "TERMINATED"}.get(decision, "RUNNING")
    return decision


def test_halving_waits_for_the_whole_cell_then_keeps_the_best_third():
    sched = halving({"c": 8})
    trials = [StubTrial(str(i), "c") for i in range(8)]
    ctl = StubController(sched, trials)
    values = [0.50, 0.90, 0.60, 0.95, 0.40, 0.70, 0.30, 0.80]
    # Early arrivals are not judged on what little has reported: they wait, even the best so far.
    assert [step(sched, ctl, t, 1, v) for t, v in zip(trials[:7], values, strict=False)] == [TrialScheduler.PAUSE] * 7
    assert sched.choose_trial_to_run(ctl) is None  # nobody waiting at a rung may run on
    assert step(sched, ctl, trials[7], 1, values[7]) == TrialScheduler.CONTINUE  # 0.80: third best of 8
    assert sorted(ctl.stopped) == [f"c/trial={i}" for i in (0, 2, 4, 5, 6)]  # the waiting losers are stopped
    assert sched.state.stopped_early == set(ctl.stopped)
    chosen = sched.choose_trial_to_run(ctl)
    assert chosen in (trials[1], trials[3]) and chosen.status == "PAUSED"  # winners resume
    # Rung 3: ceil(3/3) = 1 goes on.
    assert step(sched, ctl, trials[7], 3, 0.85) == TrialScheduler.PAUSE
    trials[1].status = trials[3].status = "RUNNING"
    assert step(sched, ctl, trials[1], 3, 0.97) == TrialScheduler.PAUSE
    assert step(sched, ctl, trials[3], 3, 0.96) == TrialScheduler.STOP
    assert "c/trial=7" in ctl.stopped and sched.choose_trial_to_run(ctl) is trials[1]
    trials[1].status = "RUNNING"
    assert step(sched, ctl, trials[1], 4, 0.97) == TrialScheduler.CONTINUE  # between rungs
    assert step(sched, ctl, trials[1], 3, 0.97) == TrialScheduler.CONTINUE  # a resumed trial reporting again


def test_halving_ties_go_to_the_lower_validation_loss():
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    for t, loss in zip(trials, [0.5, 0.3, 0.4], strict=True):
        sched.on_trial_result(ctl, t, {"epoch": 1, "val/best_acc": 0.6, "val/best_loss": loss})
    assert sched.state.halving["c"].promoted[1] == {"c/trial=1"}


def test_halving_cells_never_wait_for_or_stop_each_other():
    sched = halving({"easy": 3, "hard": 3})
    easy = [StubTrial(str(i), "easy") for i in range(3)]
    hard = [StubTrial(str(i), "hard") for i in range(3)]
    ctl = StubController(sched, easy + hard)
    for t, v in zip(easy, [0.95, 0.96, 0.97], strict=True):
        step(sched, ctl, t, 1, v)
    assert [step(sched, ctl, t, 1, v) for t, v in zip(hard[:2], [0.1, 0.2], strict=True)] == [TrialScheduler.PAUSE] * 2
    assert ctl.stopped == ["easy/trial=0", "easy/trial=1"]
    assert step(sched, ctl, hard[2], 1, 0.15) == TrialScheduler.STOP
    assert sched.choose_trial_to_run(ctl) is hard[1]


def test_halving_stops_waiting_for_failed_trials():
    sched = halving({"c": 4})
    trials = [StubTrial(str(i), "c") for i in range(4)]
    ctl = StubController(sched, trials)
    step(sched, ctl, trials[0], 1, 0.5)
    step(sched, ctl, trials[1], 1, 0.7)
    # One diverges (reports failed and ends itself), one errors: the rung is complete with the two that reported.
    assert sched.on_trial_result(ctl, trials[2], {"epoch": 1, "failed": 1, "val/best_acc": float("nan")}) == "CONTINUE"
    assert sched.choose_trial_to_run(ctl) is None
    failed_for_good(sched, ctl, trials[3])
    assert sched.choose_trial_to_run(ctl) is trials[1]  # Tune's next step: trial 3 is known failed
    assert sched.state.halving["c"].promoted[1] == {"c/trial=1"}  # ceil(2/3) = 1
    assert ctl.stopped == ["c/trial=0"]


def test_halving_searcher_records_a_trial_stopped_while_paused_as_stopped_early():
    state = SweepState()
    s = CellSearcher(cells=plans(n_cells=1, budget=3), state=state, metric="val/best_acc")
    cell = plans(n_cells=1)[0].key
    sched = halving({cell: 3}, state=state)
    trials = []
    for i in range(3):
        s.suggest(f"t{i}")
        trials.append(StubTrial(str(i), cell))
        trials[-1].trial_id = f"t{i}"
    ctl = StubController(sched, trials, searcher=s)
    for t, v in zip(trials, [0.3, 0.9, 0.6], strict=True):
        s.on_trial_result(t.trial_id, {"epoch": 1, "val/best_acc": v})
        step(sched, ctl, t, 1, v)
    assert ctl.stopped == [f"{cell}/trial=0"]  # paused, then stopped by the third trial's report
    assert state.trials["t0"].status == "stopped_early" and state.trials["t0"].value == 0.3
    assert state.studies[cell].trials[0].value == 0.3


def test_halving_spends_exactly_the_planned_epochs_and_survives_a_restore(tmp_path):
    """Drive whole cells through a stand-in Tune loop (a restore in the middle) and count trial-epochs."""
    budgets = {"a": 8, "b": 5}
    state = SweepState()
    s = CellSearcher(cells=plans(n_cells=1), state=state, metric="val/best_acc")
    sched = halving(budgets, max_t=9, state=state)
    trials = [StubTrial(str(i), c) for c, n in budgets.items() for i in range(n)]
    for t in trials:
        t.status = "PENDING"
    progress = {id(t): 0 for t in trials}
    ctl = StubController(sched, trials)
    epochs, restored = 0, False
    while (trial := sched.choose_trial_to_run(ctl)) is not None:
        trial.status = "RUNNING"
        while trial.status == "RUNNING":
            progress[id(trial)] += 1
            epochs += 1
            e, index = progress[id(trial)], int(trial.trial_id)
            value = 0.5 + 0.04 * e - 0.01 * abs(index - 3)  # index 3 best at every epoch
            decision = step(sched, ctl, trial, e, value)
            if decision == TrialScheduler.CONTINUE and e == 9:
                trial.status = "TERMINATED"
        if not restored and any(t.status == "PAUSED" for t in trials):
            waiting = [t for t in trials if t.status == "PAUSED" and not sched._may_run(t)]
            # As after a driver restart: state back from the searcher's snapshot, paused trials handed back pending.
            s.save(str(tmp_path / "s.pkl"))
            fresh = SweepState()
            sched = halving(budgets, max_t=9, state=fresh)
            CellSearcher(cells=plans(n_cells=1), state=fresh, metric="val/best_acc").restore(str(tmp_path / "s.pkl"))
            ctl = StubController(sched, trials)
            for t in trials:
                t.status = "PENDING" if t.status == "PAUSED" else t.status
                sched.on_trial_add(ctl, t)  # Tune re-adds every restored trial
            assert not any(t.status == "PENDING" and t in waiting for t in trials)  # waiting ones stay paused
            restored = True
    assert restored
    assert all(t.status == "TERMINATED" for t in trials)
    assert epochs == sum(halving_epochs(n, 9, [1, 3], 3) for n in budgets.values()) == 20 + 15
    finished = [t.config["tracking"]["trial_key"] for t in trials if progress[id(t)] == 9]
    assert finished == ["a/trial=3", "b/trial=3"]


def test_halving_counts_a_trial_past_an_unrecorded_rung_as_promoted():
    # After a restore from a snapshot older than the trial's checkpoint, it reports epoch 5 with no record at
    # rungs 1 and 3: its cell must not wait for it there.
    sched = halving({"c": 2})
    trials = [StubTrial(str(i), "c") for i in range(2)]
    ctl = StubController(sched, trials)
    assert step(sched, ctl, trials[0], 1, 0.4) == TrialScheduler.PAUSE
    assert step(sched, ctl, trials[1], 5, 0.6) == TrialScheduler.CONTINUE
    assert sched.state.halving["c"].promoted[1] == {"c/trial=1"} and ctl.stopped == ["c/trial=0"]


def test_halving_after_a_restart_stops_trials_lost_while_away():
    # Restored as pending: trial 1 was decided lost at rung 1 (by trial 2's report) in the snapshot's state.
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    for t, v in zip(trials, [0.9, 0.2, 0.8], strict=True):
        step(sched, ctl, t, 1, v)
    assert sched.state.halving["c"].lost == {"c/trial=1", "c/trial=2"}
    trials[1].status = "PENDING"
    sched.on_trial_add(ctl, trials[1])
    assert trials[1].status == "PAUSED"  # so Tune does not start it
    ctl.stopped.clear()
    sched.choose_trial_to_run(ctl)
    assert ctl.stopped == ["c/trial=1"]


def test_halving_never_waits_forever(caplog):
    # Bookkeeping gone wrong (here: a trial the searcher will never suggest): once nothing runs, nothing is
    # queued and the searcher is done, the rung is decided on those that reported, with a warning.
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(2)]
    ctl = StubController(sched, trials, searcher_finished=True)
    step(sched, ctl, trials[0], 1, 0.9)
    step(sched, ctl, trials[1], 1, 0.2)
    with caplog.at_level(logging.WARNING):
        assert sched.choose_trial_to_run(ctl) is trials[0]
    assert "c/trial=2" in caplog.text and ctl.stopped == ["c/trial=1"]


def retried(sched, ctl, trial):
    """What Tune does with a trial whose node is lost (or that fails within its failure budget): it stops it as
    errored, tells the scheduler `on_trial_error`, then queues it again (`on_trial_add`) to restart from its last
    checkpoint (TuneController._try_recover)."""
    trial.status = "ERROR"
    sched.on_trial_error(ctl, trial)
    trial.status = "PENDING"
    sched.on_trial_add(ctl, trial)


def failed_for_good(sched, ctl, trial):
    """What Tune does with a trial that errs past its failure budget: `on_trial_error`, then it stays ERROR."""
    sched.on_trial_error(ctl, trial)
    trial.status = "ERROR"


def test_halving_waits_for_a_trial_restarted_after_losing_its_node():
    # Trial 2 loses its node before its first rung: the rung waits for its restart instead of being decided on
    # trials 0 and 1 (which stopped it, unrecorded, when it got there: "finished 1/9 epochs").
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    assert step(sched, ctl, trials[0], 1, 0.5) == TrialScheduler.PAUSE
    assert step(sched, ctl, trials[1], 1, 0.6) == TrialScheduler.PAUSE
    retried(sched, ctl, trials[2])
    assert trials[2].status == "PENDING"  # restarts at once
    assert sched.choose_trial_to_run(ctl) is trials[2] and ctl.stopped == []
    assert 1 not in sched.state.halving["c"].decided
    assert step(sched, ctl, trials[2], 1, 0.9) == TrialScheduler.CONTINUE  # the best of the three goes on
    assert ctl.stopped == ["c/trial=0", "c/trial=1"] and sched.state.stopped_early == {"c/trial=0", "c/trial=1"}


def test_halving_keeps_a_trial_that_lost_its_node_while_pausing_at_a_rung():
    # Trial 0 reported rung 1 and Tune was pausing it when its node went: its value there stands, it waits paused
    # (it is not started again just to wait), and it goes on from its checkpoint when it wins.
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    step(sched, ctl, trials[0], 1, 0.9)
    trials[0].status = "RUNNING"  # the pause was not carried out
    retried(sched, ctl, trials[0])
    assert trials[0].status == "PAUSED"
    step(sched, ctl, trials[1], 1, 0.5)
    assert step(sched, ctl, trials[2], 1, 0.6) == TrialScheduler.STOP
    assert ctl.stopped == ["c/trial=1"] and sched.choose_trial_to_run(ctl) is trials[0]


def test_halving_decides_without_a_trial_that_failed_for_good():
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    step(sched, ctl, trials[0], 1, 0.5)
    step(sched, ctl, trials[1], 1, 0.6)
    failed_for_good(sched, ctl, trials[2])
    sched.choose_trial_to_run(ctl)  # Tune's next step
    assert sched.state.halving["c"].promoted[1] == {"c/trial=1"} and ctl.stopped == ["c/trial=0"]


def test_halving_stops_a_trial_that_reaches_a_rung_decided_without_it_as_stopped_early():
    # Rung 1 was decided without trial 2 (it had failed); restarted all the same (a resume that retries errored
    # trials), it is stopped there and recorded as stopped early, not left to look finished.
    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    step(sched, ctl, trials[0], 1, 0.9)
    step(sched, ctl, trials[1], 1, 0.2)
    failed_for_good(sched, ctl, trials[2])
    sched.choose_trial_to_run(ctl)
    assert 1 in sched.state.halving["c"].decided
    trials[2].status = "RUNNING"
    assert step(sched, ctl, trials[2], 1, 0.95) == TrialScheduler.STOP
    assert "c/trial=2" in sched.state.stopped_early


def test_a_lost_node_does_not_use_up_the_failure_budget(tmp_path):
    """Tune counts a node that vanished without notice as one of the trial's failures; the callback gives it back
    (up to max_forgiven times), and leaves the trial's own errors counted."""
    import cloudpickle
    from ray.exceptions import ActorUnavailableError, RayTaskError

    from sweep.tune.callbacks import NodeLossIsNotAFailure

    class FakeTrial:
        def __init__(self, error):
            self.config = {"tracking": {"trial_key": "c/trial=0"}}
            self.pickled_error_file = str(tmp_path / f"{id(self)}.pkl")
            with open(self.pickled_error_file, "wb") as f:
                cloudpickle.dump(error, f)
            self.run_metadata = type("Meta", (), {"num_failures": 1})()

    callback = NodeLossIsNotAFailure(max_forgiven=2)
    lost = FakeTrial(ActorUnavailableError("Socket closed", None))
    for _ in range(3):
        lost.run_metadata.num_failures = 1
        callback.on_trial_recover(0, [], lost)
    assert lost.run_metadata.num_failures == 1 and callback.forgiven == {"c/trial=0": 2}  # the third one counts
    own = FakeTrial(RayTaskError("train", "Traceback: ValueError: bad", ValueError("bad")))
    callback.on_trial_recover(0, [], own)
    assert own.run_metadata.num_failures == 1


@pytest.mark.parametrize(("make", "bad", "says"), [
    (lambda **kw: PerCellASHA(state=SweepState(), **kw), {"max_t": 0}, "max_t"),
    (lambda **kw: PerCellASHA(state=SweepState(), **kw), {"max_t": 9, "grace_period": 0}, "grace_period"),
    (lambda **kw: PerCellASHA(state=SweepState(), **kw), {"max_t": 9, "reduction_factor": 1}, "reduction_factor"),
    (lambda **kw: PerCellASHA(state=SweepState(), **kw), {"max_t": 9, "mode": "best"}, "mode"),
    (lambda **kw: PerCellASHA(state={}, **kw), {"max_t": 9}, "SweepState"),
    (lambda **kw: PerCellHalving(state=SweepState(), **kw), {"max_t": 9, "budgets": {"c": 0}}, "budget"),
    (lambda **kw: CellSearcher(state=SweepState(), **kw), {"cells": []}, "at least one cell"),
    (lambda **kw: CellSearcher(state=SweepState(), cells=plans(), **kw), {"sampler": "bayes"}, "sampler"),
    (lambda **kw: CellSearcher(state=SweepState(), cells=plans(), **kw), {"grid_points": 0}, "grid_points"),
])
def test_constructors_check_their_arguments(make, bad, says):
    with pytest.raises((ValueError, TypeError), match=says):
        make(**bad)


def test_constructors_take_keywords_only():
    with pytest.raises(TypeError):
        PerCellHalving(SweepState(), {"c": 3}, 9)  # the old positional form


def test_a_rung_and_the_final_choice_break_ties_the_same_way():
    """One rule (trainables.contract.selection_order) ranks a cell's trials at a rung and in the final choice:
    equal scores go to the lower validation loss, then to the lower trial key."""
    import pandas as pd

    from sweep.results.table import chosen_trials

    sched = halving({"c": 3})
    trials = [StubTrial(str(i), "c") for i in range(3)]
    ctl = StubController(sched, trials)
    scores, losses = [0.8, 0.8, 0.8], [0.30, 0.20, 0.20]  # trials 1 and 2 tie on both
    for t, s, loss in zip(trials, scores, losses, strict=True):
        sched.on_trial_result(ctl, t, {"epoch": 1, "val/best_acc": s, "val/best_loss": loss})
    assert sched.state.halving["c"].promoted[1] == {"c/trial=1"}
    table = pd.DataFrame({"cell_key": "c", "trial_key": [f"c/trial={i}" for i in range(3)], "status": "finished",
                          "score": scores, "val_best_loss": losses})
    assert chosen_trials(table)["trial_key"].tolist() == ["c/trial=1"]


def test_a_rung_report_the_driver_never_heard_is_made_again_on_resume(tmp_path):
    """The Ctrl-C bug: a trial checkpoints the rung's epoch, and the driver goes down before it hears that epoch's
    report. Resumed, the trial starts from that checkpoint; unless it reports the rung again, its first report is past
    the rung, and the rung is decided with it counted as promoted (the worst learning rate went on). Real simulated
    trials (no Ray), their reports handed to the scheduler as Tune would; the expected survivor computed from the
    simulated task's learning curve."""
    from tests.conftest import StopTraining, mlflow_experiment, run_worker
    from trainables.contract import EPOCH, SCORE
    from trainables.session import LocalSession
    from trainables.simulated import curve, train_loop_per_worker

    cell = "sim/a/test_resnet/linear/frac=1/seed=0"
    lrs = [1e-4, 1e-3, 1e-2]

    tracking = mlflow_experiment({"tracking": {"sweep": "t", "cell_key": cell}}, tmp_path)["tracking"]

    def config(i: int, lr: float) -> dict:
        return {"task": "simulated", "storage": str(tmp_path / "store"),
                "data": {"name": "synthetic"}, "backbone": {"name": "test_resnet", "weights": "random"},
                "method": {"name": "linear"}, "train": {"epochs": 4, "lr": lr, "epoch_seconds": 0},
                "tracking": {**tracking, "trial_key": f"{cell}/trial={i}"}}

    sched = PerCellHalving(state=SweepState(), budgets={cell: 3}, max_t=4, grace_period=2, reduction_factor=3)
    trials = [StubTrial(str(i), cell) for i in range(3)]
    ctl = StubController(sched, trials)

    class DriverGone(Exception):
        pass

    class Tune(LocalSession):
        """Hands each report to the scheduler and ends the attempt as Tune would on PAUSE or STOP; or goes down
        just before hearing the report of `gone_at`."""

        def __init__(self, trial, gone_at=None):
            super().__init__()
            self.trial, self.gone_at = trial, gone_at

        def report(self, metrics):
            if metrics[EPOCH] == self.gone_at:
                raise DriverGone
            super().report(metrics)
            decision = step(sched, ctl, self.trial, metrics[EPOCH], metrics[SCORE])
            if decision != TrialScheduler.CONTINUE:
                raise StopTraining(decision)

    run_worker(train_loop_per_worker, config(0, lrs[0]), Tune(trials[0]))
    run_worker(train_loop_per_worker, config(1, lrs[1]), Tune(trials[1]))
    assert [t.status for t in trials[:2]] == ["PAUSED", "PAUSED"]
    with pytest.raises(DriverGone):  # trial 2 checkpointed epoch 2; its report of it was never heard
        run_worker(train_loop_per_worker, config(2, lrs[2]), Tune(trials[2], gone_at=2))
    resumed = run_worker(train_loop_per_worker, config(2, lrs[2]), Tune(trials[2]))
    assert resumed.reports[0][EPOCH] == 2, "the resumed attempt reports its checkpoint's epoch first"

    at_rung = [max(curve(cell, lr, epoch) for epoch in (1, 2)) for lr in lrs]
    best = max(range(3), key=at_rung.__getitem__)
    assert sched.state.halving[cell].promoted[2] == {f"{cell}/trial={best}"}
    assert sorted(sched.state.stopped_early) == sorted(f"{cell}/trial={i}" for i in range(3) if i != best)


def test_every_scheduler_type_the_spec_accepts_has_its_scheduler():
    """The spec's scheduler.type (a Literal in sweep.plan.spec.SchedulerSpec) and the table run.py builds from
    (sweep.tune.scheduler.SCHEDULERS) name the same kinds; only synchronous halving pauses trials at a rung."""
    import typing

    from sweep.plan.spec import SchedulerSpec
    from sweep.tune.scheduler import SCHEDULERS

    assert set(SCHEDULERS) == set(typing.get_args(SchedulerSpec.model_fields["type"].annotation))
    assert {name for name, kind in SCHEDULERS.items() if kind.synchronous} == {"halving"}
