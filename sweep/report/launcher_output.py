"""What the launcher prints: the dry-run grid, loud warnings, and the end-of-sweep summary."""

from __future__ import annotations

import shlex
import textwrap

from sweep.plan.cost import most_added_by_rounds
from sweep.plan.spec import halving_epochs
from sweep.plan.validate import ASSUMED_CLASSES, Plan
from sweep.report.console_table import did_not_learn, format_table
from sweep.results.trust import sampling_noise


def banner(note: str) -> str:
    line = "!" * 100
    body = "\n".join("!! " + row for row in textwrap.wrap(note, 94))
    return f"{line}\n{body}\n{line}"


def dry_run(plan: Plan, name: str) -> str:
    spec = plan.spec
    out = [
        f"Sweep {name!r} ({spec.task}): {len(plan.cells)} cells, {plan.total_trials} trials",
        f"  sampler {spec.search.sampler}, up to {spec.search.trials_per_cell} trials per cell; "
        f"scheduler {spec.scheduler.type}"
        + (f" per cell (grace {spec.scheduler.grace_period}, reduction {spec.scheduler.reduction_factor:g})"
           if spec.scheduler.type != "fifo" else "")
        + f"; up to {plan.max_epochs} epochs; selection on {plan.selection.val}",
        f"  datasets: {', '.join(d.key for d in spec.datasets)}",
        f"  backbones: {', '.join(b.key for b in spec.backbones)}",
        f"  fractions: {', '.join(f'{f:g}' for f in spec.fractions)}; seeds: {_seeds(spec)}",
        "",
    ]
    rows = [("cell", "trials", "search space", "trainable / total params")]
    assumed = False
    for cell in plan.cells:
        space = ", ".join(f"{k} {d.grid(plan.grid_points) if spec.search.sampler == 'grid' else _range(d)}"
                          for k, d in sorted(cell.space.items()))
        classes = plan.classes.get(cell.dataset.key)
        counts = plan.params.get((cell.backbone.key, cell.method.key, classes))
        share = f"{counts[0]:,} / {counts[1]:,} ({100 * counts[0] / counts[1]:.2f}%)" if counts else "?"
        if counts and classes is None and plan.classifies:
            share, assumed = share + " *", True
        rows.append((cell.key, str(cell.budget), space, share))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if assumed:
        out.append(f"  * the dataset's classes are unknown until its files are here: its head is counted for "
                   f"{ASSUMED_CLASSES} classes")
    exhaustive = plan.total_trials * plan.max_epochs
    out.append("")
    if spec.scheduler.type != "fifo":
        rungs, eta = spec.scheduler.rungs(plan.max_epochs), spec.scheduler.reduction_factor
        least = sum(halving_epochs(c.budget, plan.max_epochs, rungs, eta) for c in plan.cells)
        out.append(f"Cost: at most {exhaustive:,} trial-epochs; {least:,} with synchronous halving"
                   + (" (ASHA: more, as early arrivals at a rung go on unopposed)." if spec.scheduler.type == "asha"
                      else f" (rungs at epochs {', '.join(map(str, rungs))})."))
    else:
        out.append(f"Cost: {exhaustive:,} trial-epochs.")
    trials, epochs = most_added_by_rounds(plan)
    if trials:
        out.append(f"  Search rounds (extending a cell's learning-rate range past an edge its choice sits at, "
                   f"doubling the epochs of a choice still improving) add between 0 and {trials:,} trials and "
                   f"{epochs:,} trial-epochs (at most {plan.total_trials + trials:,} trials).")
    if not isinstance(spec.seeds, list):
        initial, most = len(spec.initial_seeds), spec.max_seeds
        out.append(f"Adaptive seeds: the cells above are the first {initial} seeds. A comparison still undecided "
                   f"after them gets another seed for both of its cells, up to {most}: the cost is between the "
                   f"above and {most / initial:.3g} times it (at most {exhaustive * most // initial:,} "
                   f"trial-epochs, {plan.total_trials * most // initial:,} trials).")
    cap = spec.search.max_trial_epochs
    if cap is not None:
        out.append(f"Capped: search.max_trial_epochs {cap:,}: the sweep takes at most {cap:,} trial-epochs in all "
                   f"({plan.planned_trial_epochs:,} for the cells above at most); a search round or added seed runs "
                   "only while the most it can take still fits, and a cell whose round did not says so.")
    out += test_resolution(plan)
    if plan.notes:
        out += ["", *plan.notes]
    if plan.missing:
        out += ["", "Missing (a real run stops here until these are fixed):", *(f"  - {m}" for m in plan.missing)]
    return "\n".join(out)


def test_resolution(plan: Plan) -> list[str]:
    """How finely each dataset's test set can resolve a score: the 95% half-width of a score of 0.8 measured on
    that many images (1.96 sqrt(0.8 x 0.2 / n)). Two methods closer than about this cannot be told apart there."""
    from sweep.plan.cost import test_images
    from trainables.tasks import get_task

    if not get_task(plan.spec.task).needs_classes:
        return []
    sizes = test_images(plan)
    lines = ["", "Test sets: the 95% half-width of a score of 0.8 measured on that many test images (methods closer "
             "than about this cannot be told apart on it):"]
    for key, n in sizes.items():
        lines.append(f"  {key}: " + (f"{n:,} test images, ±{100 * sampling_noise(0.8, n):.1f} points" if n else
                                     "test images not known here (its files are not here)"))
    return lines


def summary(plan: Plan, name: str, outcome, storage, mlflow_uri: str) -> str:
    cells = outcome.cells
    done = int(cells["complete"].sum()) if len(cells) else 0
    minutes, seconds = divmod(int(outcome.seconds), 60)
    state = "complete" if outcome.complete else "INTERRUPTED"
    lines = [
        "",
        f"=== Sweep {name!r}: {done}/{len(plan.cells)} cells complete ({state}) in {minutes}m{seconds:02d}s ===",
        format_table(cells, plan.selection),
        "",
        f"Each cell's trial is chosen on validation ({plan.selection.val}); its {plan.selection.test} is shown for "
        "reporting only.",
        "trivial: what a classifier that ignores the image scores on that split (the best of always the majority "
        "class and random guesses); learned: the chosen trial beats it on validation and test by more than the "
        "noise of that many images.",
        "epochs: trial-epochs run / an exhaustive search's; stopped: trials stopped early at a rung.",
    ]
    failed = did_not_learn(cells)
    if failed:
        lines += ["", f"DID NOT LEARN: {len(failed)} cell(s) chose a trial no better than the trivial classifier; "
                  "their numbers say nothing about the method, and the report leaves them out of every comparison:",
                  *(f"  {key}" for key in failed)]
    if plan.notes:
        lines += ["", *("NOTE: " + n for n in plan.notes)]
    store = mlflow_uri.removeprefix("sqlite:///")
    lines += [
        "",
        f"MLflow tracking URI: {mlflow_uri}",
        f"  open the UI:  mlflow ui --backend-store-uri {shlex.quote(mlflow_uri)}   (then http://127.0.0.1:5000,"
        f" experiment {name!r})",
    ]
    if store != mlflow_uri:
        lines.append(f"  store file:   {store}")
    if not outcome.complete:
        lines += ["", "The sweep did not finish. Continue it with:",
                  f"  python -m sweep.launch --name {name} --storage {shlex.quote(storage.uri)} --resume"]
    return "\n".join(lines)


def _seeds(spec) -> str:
    if isinstance(spec.seeds, list):
        return ", ".join(map(str, spec.seeds))
    return (f"{', '.join(map(str, spec.initial_seeds))}, then up to {spec.max_seeds} where a comparison is undecided "
            "(adaptive)")


def _range(dist) -> str:
    if dist.choices is not None:
        return str(dist.choices)
    return f"[{dist.low:g}, {dist.high:g}]{' log' if dist.log else ''}"
