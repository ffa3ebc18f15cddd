"""Adaptive seeds: which comparisons need another seed. A pure function of the trials and cells tables
(sweep.results.table.trials_table) and the chosen trials' predictions, so the driver can ask it again at any time
(after a restart too) and get the same answer for the same results.

A comparison (sweep.results.comparisons.compare_cells: each method against full fine-tuning, the best against the
runner-up) whose cells have ended every planned trial, and whose verdict is 'undecided', gets the next seed for
both of its cells, until it is decided or has `max` seeds. One with a cell still running waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from sweep.plan.grid import Cell, with_seed
from sweep.results import comparisons
from sweep.results.cell_outcome import cell_outcomes
from sweep.results.scores import method_scores
from sweep.results.table import cell_status

Line = tuple[str, str, str, float, str]  # (task, backbone, dataset, fraction, method): a cell without its seed


@dataclass
class SeedDecision:
    add: dict[Line, int] = field(default_factory=dict)  # line -> the next seed it needs
    waiting: bool = False  # some planned cell has trials still to end: ask again later
    why: list[str] = field(default_factory=list)  # one line per comparison given a seed, or stopped at max
    # Each comparison given a seed, in order: its label, the seed each of its lines lacks (what `add` merges) and
    # its line in `why`
    pairs: list[tuple[str, dict[Line, int], str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # comparisons search.max_trial_epochs left without (within)


def line_of(row) -> Line:
    return (row["task"], row["backbone"], row["dataset"], float(row["fraction"]), row["method"])


def line_of_cell(cell: Cell) -> Line:
    return line_of({"task": cell.task, "backbone": cell.backbone.key, "dataset": cell.dataset.key,
                    "fraction": cell.fraction, "method": cell.method.key})


def seeds_needed(trials: pd.DataFrame, cells: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                 max_seeds: int, rope: float = comparisons.DEFAULT_ROPE) -> SeedDecision:
    """The seeds to add now. `cells`: every planned cell (initial and added), with its budget."""
    decision = SeedDecision()
    if cells.empty:
        return decision
    status = cell_status(trials, cells)
    incomplete = status[~status["complete"]]
    decision.waiting = not incomplete.empty
    busy = {line_of(r) for _, r in incomplete.iterrows()}
    seeds = status.groupby([*comparisons.WHERE, "method"])["seed"].agg(lambda s: sorted(set(s)))
    done = trials[trials["cell_key"].isin(status.loc[status["complete"], "cell_key"])]
    if done.empty:
        return decision
    chosen = cell_outcomes(done)
    scores = method_scores(done, chosen)
    compared = comparisons.compare_cells(chosen, scores, predictions, rope)
    for _, row in compared.iterrows():
        pair = [line_of({**row, "method": m}) for m in (row["method"], row["reference"])]
        if row["verdict"] != "undecided" or any(line in busy for line in pair):
            continue
        # A comparison is paired: it counts the seeds both cells have. One side may have more (a seed added for
        # another comparison of that method), so the next seed is the first the pair does not share, given to
        # whichever side lacks it.
        paired = set.intersection(*(set(seeds.get(line, [])) for line in pair))
        taken = len(paired)
        label = f"{row['backbone']} {row['dataset']} {row['fraction']:g}: {row['method']} vs {row['reference']}"
        if taken >= max_seeds:
            decision.why.append(f"{label}: still undecided at {taken} seeds, the most allowed")
            continue
        following = min(set(range(taken + 1)) - paired)  # the first seed the pair does not share
        lacking = [line for line in pair if following not in seeds.get(line, [])]
        for line in lacking:
            decision.add[line] = max(decision.add.get(line, following), following)
        to = "both" if len(lacking) == 2 else lacking[0][-1]
        decision.why.append(f"{label}: undecided at {taken} paired seeds (95% CI [{row['ci_low']:+.1f}, "
                            f"{row['ci_high']:+.1f}]), seed {following} added to {to}")
        decision.pairs.append((label, {line: following for line in lacking}, decision.why[-1]))
    return decision


def within(decision: SeedDecision, room: int, cost: Callable[[Line], int]) -> SeedDecision:
    """The decision cut to what `room` trial-epochs hold, `cost(line)` the most one more cell of a line can take:
    the comparisons in order, each given its seeds whole or not at all (a seed on one side decides nothing); a
    cell two comparisons share counts once. Those left without say so (`refused`, and in `why`)."""
    given = {why for *_, why in decision.pairs}
    kept = SeedDecision(waiting=decision.waiting, why=[w for w in decision.why if w not in given])
    for label, lines, why in decision.pairs:
        new = {line: seed for line, seed in lines.items() if kept.add.get(line) != seed}
        price = sum(cost(line) for line in new)
        if price > room:
            kept.refused.append(f"{label}: undecided, no seed added: {price:,} more trial-epochs would pass "
                                "search.max_trial_epochs")
            continue
        room -= price
        kept.add |= new
        kept.pairs.append((label, lines, why))
        kept.why.append(why)
    kept.why += kept.refused
    return kept


def added_cells(cells: list[Cell], planned: pd.DataFrame, more: dict[Line, int] | None = None) -> list[Cell]:
    """The cells beyond the plan's `cells`: those MLflow's cell runs (`planned`, sweep.results.table.trials_table)
    record, added earlier, and the `more` ({line: seed}) to add now; each as its planned cell with another seed."""
    lines = {line_of_cell(c): c for c in cells}
    known = {c.key for c in cells}
    wanted = {(line_of(r), int(r["seed"])) for _, r in planned.iterrows() if r["cell_key"] not in known}
    wanted |= set((more or {}).items())
    return [with_seed(lines[line], seed) for line, seed in sorted(wanted) if line in lines]
