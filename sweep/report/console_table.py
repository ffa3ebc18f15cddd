"""The table printed at the end of a sweep: one row per planned cell, from the trials MLflow holds."""

from __future__ import annotations

import math

import pandas as pd

from sweep.results.cell_outcome import LEARNED_WORDS, cell_outcomes
from trainables.contract import ENDED, Status


def cell_frame(trials: pd.DataFrame, cells: list, max_epochs: int, outcomes: pd.DataFrame | None = None
               ) -> pd.DataFrame:
    """Per planned cell: the chosen trial's hyperparameters and metrics, and what the scheduler saved.
    `outcomes`: cell_outcomes(trials), where the caller has it already."""
    chosen = (cell_outcomes(trials) if outcomes is None else outcomes).set_index("cell_key")
    rows = []
    for cell in cells:
        mine = trials[trials["cell_key"] == cell.key] if len(trials) else trials
        row: dict[str, object] = {
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
            row.update(
                chosen_trial=best["trial_key"],
                chosen=best["chosen"],
                chosen_lr=float(best["chosen_lr"]),
                val=float(best["val_best"]),
                test=float(best["test_main"]),
                trainable_params=int(best["trainable_params"]),
                total_params=int(best["total_params"]),
                trivial_val=float(best["trivial_val"]),
                trivial_test=float(best["trivial_test"]),
                learned=best["learned"],
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
            LEARNED_WORDS.get(c.get("learned"), "-") if has else "-",
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


def count(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"
