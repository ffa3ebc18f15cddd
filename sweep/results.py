"""Results read back from MLflow (the source of truth): one row per trial, and each cell's chosen trial.

The chosen trial of a cell is the best on validation (its best-epoch validation metric; ties go to the lower
validation loss at that epoch) among the trials that ran to the end. Test metrics are read for reporting only.
Trials stopped early cannot be chosen: the scheduler compares best-so-far validation scores, so a stopped trial
never beats the trial that outlived it at its rung.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep import tracking


def trial_frame(uri: str, sweep: str) -> pd.DataFrame:
    """One row per trial run of the sweep, with its tags, params and final metrics as columns."""
    mlflow = tracking.client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        return pd.DataFrame()
    rows = []
    for run in tracking.search_all(mlflow, experiment.experiment_id, "tags.role = 'trial'"):
        row: dict[str, Any] = {"run_id": run.info.run_id, "start_ms": run.info.start_time, "end_ms": run.info.end_time}
        row.update({f"tag.{k}": v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.rename(columns={"tag.cell_key": "cell_key", "tag.trial_key": "trial_key", "tag.status": "status"})
    return frame.sort_values(["cell_key", "trial_key"]).reset_index(drop=True)


def choose(trials: pd.DataFrame, metric: str) -> pd.Series | None:
    """The cell's chosen trial: best validation among finished trials (ties: lower validation loss)."""
    finished = trials[(trials["status"] == "finished") & trials[metric].notna()] if metric in trials else trials[:0]
    if finished.empty:
        return None
    loss = finished["val/best_loss"] if "val/best_loss" in finished else pd.Series(0.0, index=finished.index)
    order = pd.DataFrame({"score": finished[metric], "loss": loss.fillna(math.inf)})
    best = order.sort_values(["score", "loss"], ascending=[False, True], kind="stable").index[0]
    return finished.loc[best]


def cell_frame(trials: pd.DataFrame, cells: list, metric: str, max_epochs: int) -> pd.DataFrame:
    """One row per planned cell: the chosen trial's hyperparameters and metrics, and what the scheduler saved."""
    select = metric.rsplit("best_", 1)[-1]
    rows = []
    for cell in cells:
        mine = trials[trials["cell_key"] == cell.key] if not trials.empty else trials
        chosen = choose(mine, metric) if not mine.empty else None
        done = mine["status"].isin(["finished", "stopped_early", "failed"]).sum() if not mine.empty else 0
        row: dict[str, Any] = {
            "cell_key": cell.key,
            "method": cell.method.key,
            "trials": len(mine),
            "budget": cell.budget,
            "complete": bool(done >= cell.budget),
            "stopped_early": int((mine["status"] == "stopped_early").sum()) if not mine.empty else 0,
            "failed": int((mine["status"] == "failed").sum()) if not mine.empty else 0,
            "epochs_run": int(mine["epoch"].fillna(0).sum()) if "epoch" in mine else 0,
            "epochs_max": cell.budget * max_epochs,
        }
        if chosen is not None:
            searched = {k.removeprefix("param.searched."): v for k, v in chosen.items()
                        if k.startswith("param.searched.")}
            row.update(
                chosen_trial=chosen["trial_key"],
                chosen=", ".join(f"{k}={_short(v)}" for k, v in sorted(searched.items())),
                chosen_lr=float(searched["lr"]) if "lr" in searched else math.nan,
                val=float(chosen[metric]),
                test=float(chosen.get(f"test/{select}", math.nan)),
                trainable_params=int(chosen.get("param.trainable_params", 0)),
                total_params=int(chosen.get("param.total_params", 0)),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(cells: pd.DataFrame, metric: str) -> str:
    """The table printed at the end of a sweep."""
    select = metric.rsplit("best_", 1)[-1]
    header = ["cell", "chosen", f"val {select}", f"test {select}", "trainable / total", "epochs", "stopped"]
    lines = []
    for _, c in cells.iterrows():
        has = isinstance(c.get("chosen_trial"), str)
        lines.append([
            c["cell_key"],
            c["chosen"] if has else ("(incomplete)" if not c["complete"] else "(no finished trial)"),
            f"{c['val']:.4f}" if has else "-",
            f"{c['test']:.4f}" if has and not math.isnan(c["test"]) else "-",
            f"{_count(c['trainable_params'])} / {_count(c['total_params'])} ({100 * c['trainable_params'] / max(c['total_params'], 1):.2f}%)" if has else "-",
            f"{c['epochs_run']}/{c['epochs_max']}",
            f"{c['stopped_early']}/{c['trials']}" + (f" ({c['failed']} failed)" if c["failed"] else ""),
        ])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *lines]]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)


def _short(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def _count(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"
