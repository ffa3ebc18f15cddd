"""`python -m sweep.calibrate`: what a sweep will cost, measured on this machine before it is spent, and what it
did cost once it ran (how: sweep/plan/cost.py).

    python -m sweep.calibrate --config search_spaces/paper.yaml --arm vit --price-per-hour 3.9 --spot-price-per-hour 1.3
    python -m sweep.launch --config SPEC --dry-run --calibrate --calibration-json estimate.json   # after the grid
    python -m sweep.calibrate --actual --storage results --name NAME --estimate estimate.json --out cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from sweep.errors import InputError
from sweep.exit_codes import EXIT_BAD_INPUT
from sweep.plan.cost import actual_cost, calibrate, cost_record, duration, priced, render, worst_case
from sweep.plan.spec import SpecError


def _images(values: list[str]) -> dict[str, int]:
    out = {}
    for item in values:
        key, _, value = item.partition("=")
        if not key or not value.isdigit():
            raise SpecError(f"--images {item!r}: expected DATASET_ID=TRAIN_IMAGES, e.g. --images ham10000=7511")
        out[key] = int(value)
    return out


def _price(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        price = float(value)
    except ValueError:
        raise SpecError(f"{flag} {value!r} is not a number (a price per device-hour, e.g. {flag} 2.5)") from None
    if not math.isfinite(price) or price < 0:
        raise SpecError(f"{flag} {value!r} must be a price of zero or more")
    return price


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--price-per-hour", default=None, help="on-demand price of one device-hour")
    parser.add_argument("--spot-price-per-hour", default=None, help="spot price of one device-hour")
    parser.add_argument("--images", action="append", default=[], metavar="ID=N",
                        help="training images of a dataset whose files are not here (repeatable)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per group")
    parser.add_argument("--fresh", action="store_true", help="measure again, ignoring the cache")
    parser.add_argument("--calibration-json", default=None, metavar="PATH", help="also write it all as JSON")


def run(plans: list[tuple[Any, str]], args: argparse.Namespace) -> int:
    """Calibrate every (plan, name); every input is checked before the first measurement."""
    on_demand = _price(args.price_per_hour, "--price-per-hour")
    spot = _price(args.spot_price_per_hour, "--spot-price-per-hour")
    images = _images(args.images)
    if args.steps < 1:
        raise SpecError("--steps must be at least 1")
    report = {}
    for plan, name in plans:
        calibration = calibrate(plan, images, args.steps, args.fresh)
        costs = priced(calibration, on_demand, spot)
        print(render(calibration, name, costs), flush=True)
        print(render_worst_case(plan, calibration), flush=True)
        report[name] = {"device": calibration.device, "groups": calibration.groups, "cells": calibration.cells,
                        "overheads": calibration.overheads, "speed": calibration.speed,
                        "totals": {**calibration.totals, **costs},
                        "worst_case": worst_case(plan, calibration.totals)}
    if args.calibration_json:
        Path(args.calibration_json).write_text(json.dumps(report, indent=2))
    return 0


def render_worst_case(plan: Any, calibration: Any) -> str:
    """The most the sweep can cost once it adapts (sweep.plan.cost.worst_case), in words."""
    t = calibration.totals
    planned = t["trial_epochs_halving"]
    most = worst_case(plan, t)
    if most["trial_epochs"] == planned:
        return "Worst case: as planned (no search rounds or added seeds can run)"
    return (f"Worst case, if every search round and added seed runs: {most['trial_epochs']:,} trial-epochs, about "
            f"{most['device_hours']:.2f} device-hours and {duration(most['wall_s'])} wall time (planned: "
            f"{planned:,}, {t['device_hours_halving']:.2f}, {duration(t['wall_s_halving'])})")


def run_actual(args: argparse.Namespace) -> int:
    """`--actual`: the cost record of a finished sweep (printed, and written to --out)."""
    from sweep.plan.spec import SweepSpec
    from sweep.store.mlflow_experiment import default_tracking_uri
    from sweep.store.storage import parse_storage
    from sweep.tune.run import load_inputs

    if not args.name:
        raise SpecError("--actual needs --name: the sweep's name, as it was launched")
    storage = parse_storage(args.storage)
    inputs = load_inputs(storage, args.name)
    uri = args.mlflow_uri or inputs.get("mlflow_uri") or default_tracking_uri(storage)
    spec = SweepSpec.model_validate(inputs["spec"])
    actual = actual_cost(uri, args.name, spec.initial_seeds)
    if args.wall_seconds is not None:
        actual["wall_s"] = args.wall_seconds  # measured around the launcher (e.g. `time`): its start-up included
    if not args.estimate:
        print(json.dumps({k: v for k, v in actual.items() if k != "rounds"}, indent=2))
        return 0
    try:
        estimate = json.loads(Path(args.estimate).read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"--estimate {args.estimate}: cannot read it as JSON ({e})") from None
    record = cost_record(args.name, estimate, actual, spec)
    r = record["ratios"]
    print(f"{args.name}: {actual['trial_epochs']:,} trial-epochs in {duration(actual['wall_s'])}; estimate for "
          f"what ran: {record['estimate_for_what_ran']['trial_epochs']:,} in "
          f"{duration(record['estimate_for_what_ran']['wall_s'])} (x{r['trial_epochs'] or 0:.2f} trial-epochs, "
          f"x{r['wall'] or 0:.2f} wall); {actual['rounds_run']} search round(s), {actual['cells_added']} cell(s) "
          "added with seeds" + (f" ({actual['cells_added_not_run']} more added but not run: the sweep stopped before "
                                "them; not in the estimate)" if actual["cells_added_not_run"] else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from sweep.plan.spec import DEFAULT_SPEC, chosen_arms, load_specs
    from sweep.plan.validate import make_plan

    parser = argparse.ArgumentParser(prog="python -m sweep.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--arm", action="append", default=[])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-root", default=None)
    actual = parser.add_argument_group("what a finished sweep cost (--actual)")
    actual.add_argument("--actual", action="store_true", help="read a finished sweep's cost from its MLflow")
    actual.add_argument("--storage", default="results", help="where the sweep lives (as given to sweep.launch)")
    actual.add_argument("--name", default=None, help="the sweep's name")
    actual.add_argument("--mlflow-uri", default=None, help="its MLflow (default: as it was launched)")
    actual.add_argument("--estimate", default=None, metavar="PATH",
                        help="the dry run's --calibration-json, to compare with (without: the actual cost only)")
    actual.add_argument("--wall-seconds", type=float, default=None,
                        help="the sweep's wall time measured around the launcher (default: its MLflow sweep run's)")
    actual.add_argument("--out", default=None, metavar="PATH", help="write the cost record (JSON) here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.actual:
            return run_actual(args)
        path = Path(args.config) if args.config else DEFAULT_SPEC
        specs = chosen_arms(load_specs(path, args.overrides), args.arm)
        root = args.data_root or os.environ.get("MEDPEFT_DATA_ROOT")
        plans = [(make_plan(spec, path, root, allow_missing=True), spec.name) for spec in specs]
        return run(plans, args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
