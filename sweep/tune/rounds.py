"""What a cell's search does once its trials have all ended: widen its learning-rate range, run its chosen
configuration longer, or stop (the Deep Learning Tuning Playbook's advice, made automatic per cell).

The rules, in the order they are applied to a cell whose round has ended (`next_round`):

1. **The chosen trial** is the one the report chooses (trainables.contract.selection_order over the trials that
   ran to the end, of every round; over all that did not fail if none did).
2. **Stability edge**: every trial with a larger learning rate than the chosen one diverged (FAILED: loss not
   finite or exploding) or did not learn (its best-so-far score never rose above its first epoch's by more than
   the tolerance, while the chosen one's did). That edge is the method's stability limit, not a range problem:
   no extension upwards ("stability edge: larger learning rates diverged"). If the chosen one is also the lowest
   learning rate tried, the range extends downwards.
3. **Flat range**: the scores of the round are equal within the tolerance at a rung that decided it (every
   trial compared there within the tolerance of the winner), or, without rung records, their final scores are.
   The order of the trials says nothing about direction then; training signal lies at larger learning rates, so
   the range extends upwards, and the cell says so. A range still flat once `max_extensions` rounds have run (a
   flat region far below a method's learning rates can end; it keeps extending while it may) has answered the
   question as far as it was asked: the learning rate made no difference there that this validation set can see.
   The search ends with the edge kind "flat", not "high": its best is not at an edge, it is not identifiable.
4. **Range edge**: the chosen learning rate is the highest (lowest) tried: a round of new learning rates beyond
   it, one decade further at the cell's own log spacing (grid: the step between its grid points; other samplers:
   its planned trials per decade), inside `lr_limits`, at most `max_extensions` rounds.
5. **Not converged**: with the range settled, if the chosen trial's best-so-far validation score was still rising
   over its last epochs (trainables.contract.still_improving, the definition the report's † uses too), one more
   trial runs its configuration with twice the epochs, at most `max_doublings` times. The report's choice (the
   best by validation) then picks between them.

"Equal" and "rose" are judged per cell against the noise of its validation score (`cell_tolerance`: one
standard error at the chosen trial's score and the validation images its trials reported, never below the spec's
`flat_tolerance`): on 39 validation images one image is 2.6 points.

Every other searched numeric knob (weight decay, a LoRA rank searched over a range or numeric choices) gets the
same edge check as the learning rate (sweep.plan.grid.range_edge): a chosen value at the lowest or highest the cell
tried is reported (`knob_edges`, `describe`), never extended: the Playbook's advice to widen is about the one
hyperparameter whose best value moves by decades from one setting to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sweep.plan.grid import LR, extension_round_size, lr_step, lrs_beyond, range_edge, trial_key
from sweep.plan.spec import Dist
from sweep.results.table import SETTLED_EDGES
from sweep.tune.state import (
    ROUND_DOUBLING,
    ROUND_HIGH,
    ROUND_LOW,
    CellRungs,
    CellSearch,
    Round,
    SweepState,
    TrialRecord,
    round_key,
)
from trainables.contract import (
    SCORE_TOLERANCE,
    SEARCH_EDGE_TAG,
    SEARCH_KNOB_EDGES_TAG,
    SEARCH_NOTE_TAG,
    SEARCH_RANGES_TAG,
    SEARCH_ROUNDS_TAG,
    SEARCH_TAG,
    Status,
    score_tolerance,
    selection_order,
    still_improving,
)

# Scores (SCORE units: accuracy, F1 ... in [0, 1]) closer than this are equal (the spec's search.flat_tolerance):
# the contract's, which its not-converged rule (still_improving, imported here for the doubling) uses too.
FLAT_TOLERANCE = SCORE_TOLERANCE

# A cell's search ends with one of these (CellSearch.edge): the best inside its range, at the method's stability
# limit, on a range flat within noise after an extension, or (the last two) at an edge of its range.
INTERIOR, STABILITY, FLAT = SETTLED_EDGES  # ("interior", "stability", "flat"): none is a range edge to widen
AT_HIGH, AT_LOW = "high", "low"
EDGE_KINDS = (INTERIOR, STABILITY, FLAT, AT_HIGH, AT_LOW)
STABILITY_NOTE = "stability edge: larger learning rates diverged"


@dataclass(frozen=True)
class Rules:
    extend: bool
    lr_limits: tuple[float, float]
    max_extensions: int
    max_doublings: int
    flat_tolerance: float = FLAT_TOLERANCE
    mode: str = "max"

    @property
    def may_add_rounds(self) -> bool:
        return self.extend or self.max_doublings > 0


def chosen(records: list[TrialRecord], mode: str = "max") -> TrialRecord | None:
    """The cell's chosen trial by the contract's one rule (what the report chooses too)."""
    sign = 1.0 if mode == "max" else -1.0
    finished = [r for r in records if r.status == Status.FINISHED and r.value is not None]
    pool = finished or [r for r in records if r.status != Status.FAILED and r.value is not None]
    return min(pool, key=lambda r: selection_order(sign * r.value, r.best_loss, trial_key(r.cell, r.index)),
               default=None)


def did_not_learn(record: TrialRecord, tolerance: float, mode: str = "max") -> bool:
    """Diverged (FAILED), or its best-so-far score never rose above its first epoch's by more than `tolerance`
    (needs two epochs or more to tell)."""
    if record.status == Status.FAILED:
        return True
    sign = 1.0 if mode == "max" else -1.0
    values = [sign * record.scores[e] for e in sorted(record.scores)]
    return len(values) >= 2 and max(values) - values[0] <= tolerance


def next_round(search: CellSearch, records: list[TrialRecord], state: SweepState, cell: str, rules: Rules,
               grid_points: int, sampler: str, base_epochs: int | None = None) -> Round | None:
    """The cell's next round, or None when its search is done; either way its `edge` and `note` say how its
    range stands. `records`: every trial of the cell, all ended."""
    rules = replace(rules, flat_tolerance=cell_tolerance(records, rules))
    search.knob_edges = knob_edges(search.rounds[0].space, records, chosen(records, rules.mode))
    if search.rounds[-1].kind != ROUND_DOUBLING:
        direction = _judge_range(search, records, state, cell, rules)
        if direction is not None:
            added = _extension(search, records, direction, rules, grid_points, sampler)
            if added is not None:
                return added
            if search.note.startswith(FLAT_WHY):  # flat, and lr_limits leave no higher learning rate to try
                _end_flat(search, records, rules.flat_tolerance, f"at the limit {rules.lr_limits[1]:g} (search.lr_limits)")
    if search.edge == "":
        search.edge, search.note = INTERIOR, ""
    doublings = sum(r.kind == ROUND_DOUBLING for r in search.rounds)
    best = chosen(records, rules.mode)
    if best is None or doublings >= rules.max_doublings or not still_improving(best.scores, rules.flat_tolerance,
                                                                               rules.mode == "max"):
        return None
    if best.round < len(search.rounds) and search.rounds[best.round].kind == ROUND_DOUBLING and doublings:
        epochs = search.rounds[best.round].epochs
    else:
        epochs = base_epochs or max(best.scores)
    index = search.budget
    return Round(ROUND_DOUBLING, index, 1, search.rounds[best.round].space,
                 why=f"{trial_key(cell, best.index)} still improving at its last epoch: epochs {epochs} -> "
                     f"{2 * epochs}",
                 epochs=2 * epochs, params=dict(best.params))


def refuse(search: CellSearch, added: Round, why: str) -> None:
    """A round next_round asked for is not run (`why`: the sweep's trial-epoch cap): the cell's search ends as it
    stands, an extension's at the range edge it would have widened (the report marks it), a doubling's with its
    choice still improving (marked too), and its note says why."""
    if added.kind in (ROUND_HIGH, ROUND_LOW):
        search.edge, search.note = added.kind, f"{added.why}; not widened: {why}"
    else:
        search.note = "; ".join(n for n in (search.note, f"epochs not doubled: {why}") if n)


def cell_tolerance(records: list[TrialRecord], rules: Rules) -> float:
    """The least score difference that counts in this cell: the standard error of its chosen trial's validation
    score on the validation images its trials reported (trainables.contract.score_tolerance), or the spec's
    flat_tolerance where that is larger or the task reports no validation images."""
    best = chosen(records, rules.mode)
    images = next((r.val_images for r in records if r.val_images), None)
    score = None if best is None or best.value is None else (best.value if rules.mode == "max" else -best.value)
    return score_tolerance(score, images, rules.flat_tolerance)


def knob_edges(space: dict[str, Any], records: list[TrialRecord], best: TrialRecord | None) -> dict[str, str]:
    """Every searched knob but the learning rate whose chosen value (`best`'s) is at an edge of the values the
    cell's trials tried: name -> "high"/"low" (range_edge: numeric knobs with more than one value tried)."""
    if best is None:
        return {}
    edges = {name: range_edge(best.params.get(name), [r.params[name] for r in records if name in r.params])
             for name in sorted(space) if name != LR}
    return {name: edge for name, edge in edges.items() if edge}


def _judge_range(search: CellSearch, records: list[TrialRecord], state: SweepState, cell: str,
                 rules: Rules) -> str | None:
    """Sets search.edge and search.note; returns the direction to extend ("high"/"low") or None."""
    space = search.rounds[0].space
    lr = space.get(LR)
    if lr is None or lr.choices is not None:
        search.edge, search.note = INTERIOR, "learning rate not searched"
        return None
    best = chosen(records, rules.mode)
    if best is None:
        search.edge, search.note = INTERIOR, "no trial learned: range not judged"
        return None
    tol = rules.flat_tolerance
    above = [r for r in records if r.params[LR] > best.params[LR]]
    below = [r for r in records if r.params[LR] < best.params[LR]]
    side = range_edge(best.params[LR], [r.params[LR] for r in records])
    if above and all(did_not_learn(r, tol, rules.mode) for r in above) and not did_not_learn(best, tol, rules.mode):
        if below:
            search.edge, search.note = STABILITY, STABILITY_NOTE
            return None
        direction, why = ROUND_LOW, "best at the lowest learning rate tried (larger ones diverged)"
    elif _flat(search, records, state, cell, rules):
        extended = sum(r.kind in (ROUND_HIGH, ROUND_LOW) for r in search.rounds)
        if extended and extended >= rules.max_extensions:
            _end_flat(search, records, tol, f"after {extended} extension round(s)")
            return None
        direction, why = ROUND_HIGH, FLAT_WHY
    elif side == AT_HIGH or not (above or below):
        # One learning rate tried has no edge to be at (range_edge), but nothing says the best is below it either:
        # as for a flat range, training signal lies up.
        direction, why = ROUND_HIGH, "best at the highest learning rate tried"
    elif side == AT_LOW:
        direction, why = ROUND_LOW, "best at the lowest learning rate tried"
    else:
        search.edge, search.note = INTERIOR, ""
        return None
    extensions = sum(r.kind in (ROUND_HIGH, ROUND_LOW) for r in search.rounds)
    search.edge = direction
    if not rules.extend:
        search.note = f"{why}; extension off"
        return None
    if extensions >= rules.max_extensions:
        search.note = f"{why}; after {extensions} extension round(s) (search.max_extensions)"
        return None
    search.note = why
    return direction


FLAT_WHY = "flat range (scores equal within noise): extended up"


def _end_flat(search: CellSearch, records: list[TrialRecord], tol: float, why: str) -> None:
    tried = sorted(r.params[LR] for r in records)
    search.edge = FLAT
    search.note = (f"flat range: scores equal within the validation noise (±{tol:.3f}) over lr {tried[0]:.3g}.."
                   f"{tried[-1]:.3g}, {why}: the learning rate makes no difference there")


FLAT_MIN_TRIALS = 3  # two equal neighbours are an optimum between them; a flat range needs more than two


def _flat(search: CellSearch, records: list[TrialRecord], state: SweepState, cell: str, rules: Rules) -> bool:
    """The cell's scores, every round's, are equal within the tolerance where the whole range was compared: at
    the first rung of successive halving (so a rung decided by a tie counts), or else at the end."""
    halvings: list[CellRungs] = [state.halving[k] for k in (round_key(cell, i) for i in range(len(search.rounds)))
                                 if k in state.halving]
    # A rung can be decided with no values recorded in this driver (after a restore, trials that ended before it
    # are replayed and count as promoted there): then the final scores are what is known.
    if halvings and halvings[0].decided and halvings[0].values:
        first = min(halvings[0].values)
        values = [v[0] for h in halvings for v in h.values.get(first, {}).values() if v[0] is not None]
    else:
        sign = 1.0 if rules.mode == "max" else -1.0
        values = [sign * r.value for r in records if r.status != Status.FAILED and r.value is not None]
    return len(values) >= FLAT_MIN_TRIALS and max(values) - min(values) <= rules.flat_tolerance


def _extension(search: CellSearch, records: list[TrialRecord], direction: str, rules: Rules, grid_points: int,
               sampler: str) -> Round | None:
    initial = search.rounds[0]
    lr: Dist = initial.space[LR]
    step = lr_step(lr, grid_points, initial.size, sampler)
    tried = [r.params[LR] for r in records]
    edge = max(tried) if direction == ROUND_HIGH else min(tried)
    new = lrs_beyond(edge, step, direction == ROUND_HIGH, rules.lr_limits, tried)
    if not new:
        limit = rules.lr_limits[1] if direction == ROUND_HIGH else rules.lr_limits[0]
        search.note += f"; at the limit {limit:g} (search.lr_limits)"
        return None
    why = search.note
    search.note = search.edge = ""  # the round is under way: the cell's verdict comes when it ends
    size = extension_round_size(initial.space, new, grid_points, sampler)
    if sampler == "grid":
        space: dict[str, Any] = {**initial.space, LR: Dist(choices=new)}
    else:
        # The distribution widened that way: the round samples the new part (one decade, or up to the limit),
        # as many trials as the cell's planned density gives it; the study learns from every round.
        lo, hi = (edge, max(new)) if direction == ROUND_HIGH else (min(new), edge)
        space = {**initial.space, LR: Dist(low=lo, high=hi, log=True)}
    return Round(direction, search.budget, size, space, why=f"{why} ({edge:.3g})", lrs=sorted(new))


def describe(search: CellSearch, records: list[TrialRecord]) -> dict[str, str]:
    """What a person reads about a cell's search: its learning rates tried, its rounds, how its range ended and
    which other searched knobs ended at an edge (the launcher's table and the cell's MLflow run)."""
    lrs = sorted({r.params[LR] for r in records if LR in r.params})
    parts = [f"lr {lrs[0]:.3g}..{lrs[-1]:.3g}"] if lrs else []
    extensions = [r for r in search.rounds if r.kind in (ROUND_HIGH, ROUND_LOW)]
    for kind in (ROUND_HIGH, ROUND_LOW):
        n = sum(r.kind == kind for r in extensions)
        if n:
            parts.append(f"+{n} round{'s' if n > 1 else ''} {kind}")
    for r in search.rounds:
        if r.kind == ROUND_DOUBLING:
            parts.append(f"epochs {r.epochs // 2} -> {r.epochs}")
    if search.edge in (STABILITY, AT_HIGH, AT_LOW):
        parts.append(search.note if search.edge == STABILITY else f"at the {search.edge} edge ({search.note})")
    elif search.edge == FLAT:
        parts.append("flat range (no learning rate better than another within the validation noise)")
    knobs = search.knob_edges or {}
    parts += [f"{name} at its {edge} edge" for name, edge in knobs.items()]
    ranges = []
    for r in search.rounds:
        if r.kind == ROUND_DOUBLING:
            continue
        mine = [rec.params[LR] for rec in records if rec.round == search.rounds.index(r) and LR in rec.params]
        if mine:
            ranges.append(f"{r.kind}: {min(mine):.3g}..{max(mine):.3g}")
    return {
        SEARCH_TAG: ", ".join(parts),
        SEARCH_ROUNDS_TAG: str(len(search.rounds)),
        SEARCH_RANGES_TAG: "; ".join(ranges),
        SEARCH_EDGE_TAG: search.edge,
        SEARCH_NOTE_TAG: search.note,
        # The other knobs' edges, e.g. "weight_decay high, knobs.r low" ('' when none is at an edge).
        SEARCH_KNOB_EDGES_TAG: ", ".join(f"{name} {edge}" for name, edge in knobs.items()),
    }
