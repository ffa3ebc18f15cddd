"""What a finished (or interrupted) sweep writes back to MLflow, so that its compare view answers "which method won
here" without our report: each trial's `is_best_in_cell`, each cell's chosen trial with its scores and verdicts."""

from __future__ import annotations

import time

from sweep.report import trust
from sweep.report.analysis import chosen_trials
from sweep.store import mlflow_experiment
from trainables.contract import ENDED


def record_outcome(uri: str, trials, status, finished_parent: str | None = None) -> None:
    """What MLflow's compare view needs to answer "which method won here": every ended trial run gets an
    `is_best_in_cell` tag; every cell run its chosen trial, chosen hyperparameters and scores (`chosen_lr`,
    `val`, `test`). Complete cells (and, when given, the sweep's parent run) are closed."""
    from mlflow.entities import Metric, RunTag

    mlflow = mlflow_experiment.client(uri)
    for run_id, best, state in zip(trials["run_id"], trials["is_best_in_cell"], trials["status"], strict=True):
        if state in ENDED:
            mlflow.set_tag(run_id, "is_best_in_cell", str(bool(best)).lower())
    chosen = trust.add_trivial(chosen_trials(trials))
    verdicts = trust.cell_verdicts(chosen, ["cell_key"]).set_index("cell_key") if len(chosen) else None
    chosen = chosen.set_index("cell_key")
    now = int(time.time() * 1000)
    for cell in status.itertuples():
        tags, metrics = [RunTag("complete", str(bool(cell.complete)).lower())], []
        if cell.cell_key in chosen.index:
            best = chosen.loc[cell.cell_key]
            searched = {k.removeprefix("searched."): v for k, v in best.items()
                        if k.startswith("searched.") and v == v}  # v == v: not NaN
            tags += [RunTag("chosen_trial", best["trial_key"]),
                     RunTag("chosen", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in sorted(searched.items())))]
            verdict = verdicts.loc[cell.cell_key]
            # "did not learn" where the chosen trial is no better than the trivial classifier (sweep.report.trust).
            tags += [RunTag("learned", {None: "n/a", True: "yes", False: "did not learn"}[trust.verdict(verdict["learned"])]),
                     RunTag("not_converged", str(bool(best.get("not_converged", False))).lower()),
                     RunTag("lr_at_edge", str(best.get("lr_at_edge", "")) or "no"),
                     RunTag("knobs_at_edge", str(best.get("knobs_at_edge", "")) or "no")]
            values = {"val": best["val_best"], "test": best["test_main"],
                      "chosen_lr": searched.get("lr"), "trivial_val": verdict["trivial_val"],
                      "trivial_test": verdict["trivial_test"]}
            metrics = [Metric(k, float(v), now, 0) for k, v in values.items()
                       if isinstance(v, int | float) and v == v]
        mlflow.log_batch(cell.cell_run_id, metrics=metrics, tags=tags)
        if cell.complete:
            mlflow.set_terminated(cell.cell_run_id, "FINISHED")
    if finished_parent:
        mlflow.set_terminated(finished_parent, "FINISHED")
