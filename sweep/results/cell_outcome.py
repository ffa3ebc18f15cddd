"""Each cell's outcome, computed once: its chosen trial (marked by sweep.results.table.mark_best_in_cell), the trivial
classifier's scores on that trial's splits, whether the cell learned (sweep.results.trust), and its searched values
as text. The launcher's table, the write-back to MLflow's cell runs and the report's tables all read it, so they
say the same thing in the same words."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from sweep.results import trust
from trainables.contract import SEARCHED_PREFIX

# The one vocabulary of the learned-verdict, wherever it is printed or tagged.
LEARNED_WORDS: dict[bool | None, str] = {True: "yes", False: "did not learn", None: "n/a"}


def learned_word(value: Any) -> str:
    return LEARNED_WORDS[trust.verdict(value)]


def searched_values(trial: Mapping[str, Any]) -> dict[str, Any]:
    """The values a trial's cell searched over ({'lr': 0.001, ...}), from its `searched.*` columns; a column the
    trial's cell did not search is NaN there and left out."""
    return {k.removeprefix(SEARCHED_PREFIX): v for k, v in trial.items()
            if k.startswith(SEARCHED_PREFIX) and not (isinstance(v, float) and math.isnan(v))}


def format_value(value: Any) -> str:
    """A searched value as printed: numbers to three significant digits."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def searched_text(trial: Mapping[str, Any]) -> str:
    """'lr=0.001, weight_decay=0.01': a trial's searched values, sorted by name."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in sorted(searched_values(trial).items()))


def cell_outcomes(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell with a chosen trial, sorted by cell key: the chosen trial's row of `trials`, with its trivial
    scores (`trivial_val`, `trivial_test`, and the split sizes `n_val`, `n_test`), `learned` (True, False, or None
    where no trivial score exists), `chosen` (its searched values as text) and `chosen_lr` (NaN where the cell did
    not search the learning rate). `trials`: marked by sweep.results.table.mark_best_in_cell (trials_table is)."""
    if "status" not in trials.columns:  # no trial run yet: not even the table's columns
        return pd.DataFrame(columns=["cell_key", "learned", "chosen", "chosen_lr"])
    chosen = trust.add_trivial(trials[trials["is_best_in_cell"].astype(bool)].reset_index(drop=True))
    verdicts = trust.cell_verdicts(chosen, ["cell_key"]).set_index("cell_key")["learned"]
    chosen["learned"] = pd.Series([trust.verdict(verdicts[key]) for key in chosen["cell_key"]], index=chosen.index,
                                  dtype=object)
    searched = [searched_values(row) for _, row in chosen.iterrows()]
    chosen["chosen"] = [searched_text(row) for _, row in chosen.iterrows()]
    chosen["chosen_lr"] = [float(s["lr"]) if "lr" in s else math.nan for s in searched]
    return chosen
