"""Is the cost estimate right? `--dry-run --calibrate` against what the quickstart then costs on this machine, and
against every committed study's cost record (`docs/results/*/cost.json`, written by `python -m sweep.calibrate
--actual`).

- `estimate_wall_quickstart`: the calibrated estimate of the wall time (with halving) ÷ the launcher's wall time.
- `estimate_epochs_quickstart`: the estimate's trial-epochs for what ran ÷ those the trials logged.
- `estimate_slot_seconds_quickstart`: the estimate's busy slot-seconds (device-seconds) ÷ the slot-seconds the
  sweep held (its wall time x slots): below 1 by what the slots idle (Ray's start, the last trial alone).
- `estimate_wall_<study>` / `estimate_epochs_<study>`: the same two ratios from a committed cost record (the
  estimate for what actually ran: its search rounds and added seeds at the planned cost per trial-epoch).

The calibration is cached per machine (`$MEDPEFT_CACHE_DIR/calibration`): on a machine measured before, only the
sweep runs. `--quick` runs a reduced copy of the quickstart (two methods, one fraction): a quarter of its trials.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Result, data_args, launch

QUICK = ["--set", "methods=[linear,bias]", "--set", "fractions=[0.5]"]
TARGET = "0.8-1.2"


def run(quick: bool = False) -> list[Result]:
    return [*quickstart(quick), *committed()]


def quickstart(quick: bool) -> list[Result]:
    from sweep.plan import cost
    from sweep.plan.spec import SweepSpec
    from sweep.store.storage import parse_storage
    from sweep.tune.run import load_inputs

    args = [*data_args(), *(QUICK if quick else [])]
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as folder:
        estimate = Path(folder) / "estimate.json"
        launch("--dry-run", "--calibrate", "--calibration-json", str(estimate), *args)
        storage = Path(folder) / "store"
        started = time.perf_counter()
        launch("--storage", str(storage), *args)
        wall = time.perf_counter() - started
        spec = SweepSpec.model_validate(load_inputs(parse_storage(str(storage)), "quickstart")["spec"])
        actual = cost.actual_cost(f"sqlite:///{storage / 'mlflow.db'}", "quickstart", spec.initial_seeds) | {
            "wall_s": wall}
        calibration = json.loads(estimate.read_text())
    record = cost.cost_record("quickstart", calibration, actual, spec)
    totals = cost.estimate_entry(calibration, "quickstart")["totals"]
    held = wall * totals["slots"]
    busy = totals["device_hours_halving"] * 3600
    name = "quickstart (reduced: 2 methods, 1 fraction)" if quick else "quickstart"
    return [*ratios("quickstart", name, record),
            Result("estimate_slot_seconds_quickstart", busy / held, "-",
                   f"{busy:.0f} device-seconds estimated busy ({totals['overhead_hours_halving'] * 3600:.0f} of "
                   "them overheads)", f"{held:.0f} slot-seconds held ({wall:.0f} s x {totals['slots']} slots)")]


def ratios(key: str, name: str, record: dict) -> list[Result]:
    """The wall-time and trial-epoch rows of one cost record."""
    ran, actual, r = record["estimate_for_what_ran"], record["actual"], record["ratios"]
    planned = record["estimate"]["planned"]
    return [
        Result(f"estimate_wall_{key}", r["wall"], TARGET,
               f"{ran['wall_s']:.0f} s estimated for {name} (planned {planned['wall_s']:.0f} s, "
               f"{planned['slots']} slots)",
               f"{actual['wall_s']:.0f} s it ran", {"record": record["estimate"], "actual": actual}),
        Result(f"estimate_epochs_{key}", r["trial_epochs"], TARGET,
               f"{ran['trial_epochs']:,} trial-epochs estimated for what ran ({actual.get('rounds_run', 0)} search "
               f"rounds, {actual.get('cells_added', 0)} cells added with seeds)",
               f"{actual['trial_epochs']:,} trial-epochs its trials logged"),
    ]


def committed(root: Path = REPO / "docs" / "results") -> list[Result]:
    """A row pair per committed cost record (none yet: nothing is printed for a study without one)."""
    from sweep.plan import cost

    out = []
    for path in sorted(root.glob("*/cost.json")):
        try:
            record = cost.check_record(json.loads(path.read_text()), str(path.relative_to(REPO)))
        except ValueError as e:  # CalibrationError is one; so is JSON that does not parse
            raise SystemExit(f"bench estimate: {e}") from None
        out += ratios(path.parent.name.replace("-", "_"), path.parent.name, record)
    return out
