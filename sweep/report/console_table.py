"""The table printed at the end of a sweep: one row per planned cell, from the trials MLflow holds."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep.report import trust
from sweep.report.analysis import chosen_trials
from trainables.contract import ENDED, Status


def cell_frame(trials: pd.DataFrame, cells: list, max_epochs: int) -> pd.DataFrame:
    """Per planned cell: the chosen trial's hyperparameters and metrics, and what the scheduler saved."""
    chosen = trust.add_trivial(chosen_trials(trials)) if len(trials) else pd.DataFrame()
    verdicts = trust.cell_verdicts(chosen, ["cell_key"]).set_index("cell_key") if len(chosen) else None
    chosen = chosen.set_index("cell_key") if len(chosen) else chosen
    rows = []
    for cell in cells:
        mine = trials[trials["cell_key"] == cell.key] if len(trials) else trials
        row: dict[str, Any] = {
            "cell_key": cell.key,
            "trials": len(mine),
            "budget": cell.budget,
            "complete": int(mine["status"].isin(ENDED).sum()) >= cell.budget if len(mine) else False,
            "stopped_early": int(mine["stopped_early"].sum()) if len(mine) else 0,
            "failed": int((mine["status"] == Status.FAILED).sum()) if len(mine) else 0,
            "epochs_run": int(mine["epochs_run"].sum()) if len(mine) else 0,
            "epochs_max": cell.budget * max_epochs,
            "has_result": cell.key in chosen.index,
        }
        if cell.key in chosen.index:
            best = chosen.loc[cell.key]
            searched = {k.removeprefix("searched."): v for k, v in best.items()
                        if k.startswith("searched.") and not (isinstance(v, float) and math.isnan(v))}
            row.update(
                chosen_trial=best["trial_key"],
                chosen=", ".join(f"{k}={_short(v)}" for k, v in sorted(searched.items())),
                chosen_lr=float(searched["lr"]) if "lr" in searched else math.nan,
                val=float(best["val_best"]),
                test=float(best["test_main"]),
                trainable_params=int(best["trainable_params"]),
                total_params=int(best["total_params"]),
                trivial_val=float(verdicts.loc[cell.key, "trivial_val"]),
                trivial_test=float(verdicts.loc[cell.key, "trivial_test"]),
                learned=trust.verdict(verdicts.loc[cell.key, "learned"]),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(cells: pd.DataFrame, selection) -> str:
    header = ["cell", "chosen", selection.val.replace("/best_", " "), selection.test.replace("/", " "),
              "trivial val/test", "learned", "trainable / total", "epochs", "stopped"]
    lines = []
    for _, c in cells.iterrows():
        has = isinstance(c.get("chosen_trial"), str)
        share = f" ({100 * c['trainable_params'] / max(c['total_params'], 1):.2f}%)" if has else ""
        lines.append([
            c["cell_key"],
            c["chosen"] if has else ("(incomplete)" if not c["complete"] else "(no finished trial)"),
            f"{c['val']:.4f}" if has else "-",
            f"{c['test']:.4f}" if has and not math.isnan(c["test"]) else "-",
            _pair(c.get("trivial_val"), c.get("trivial_test")) if has else "-",
            {None: "n/a", True: "yes", False: "NO"}.get(c.get("learned"), "-") if has else "-",
            f"{count(c['trainable_params'])} / {count(c['total_params'])}{share}" if has else "-",
            f"{c['epochs_run']}/{c['epochs_max']}",
            f"{c['stopped_early']}/{c['trials']}" + (f" ({c['failed']} failed)" if c["failed"] else ""),
        ])
    if "search" in cells and cells["search"].fillna("").astype(bool).any():  # cells that searched in rounds
        header.append("search")
        for line, search in zip(lines, cells["search"].fillna(""), strict=True):
            line.append(search)
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *lines]]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)


def _pair(val: float | None, test: float | None) -> str:
    if val is None or test is None or math.isnan(val) or math.isnan(test):
        return "-"
    return f"{val:.3f}/{test:.3f}"


def did_not_learn(cells: pd.DataFrame) -> list[str]:
    """The cells whose chosen trial did not beat the trivial classifier (for the launcher's summary)."""
    if "learned" not in cells:
        return []
    return [key for key, ok in zip(cells["cell_key"], cells["learned"], strict=True) if ok is False]


def _short(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def count(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"
