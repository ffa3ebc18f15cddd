"""`python -m sweep.calibrate`: what a sweep will cost, measured on this machine before it is spent
(how: sweep/plan/cost.py).

    python -m sweep.calibrate --config search_spaces/paper.yaml --arm vit --price-per-hour 3.9 --spot-price-per-hour 1.3
    python -m sweep.launch --config SPEC --dry-run --calibrate        # the same, after the dry run's grid
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from sweep.exit_codes import EXIT_BAD_INPUT
from sweep.plan.cost import calibrate, most_added_by_rounds, priced, render
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
                        "totals": {**calibration.totals, **costs}}
    if args.calibration_json:
        Path(args.calibration_json).write_text(json.dumps(report, indent=2))
    return 0


def render_worst_case(plan: Any, calibration: Any) -> str:
    """The most the sweep can cost once it adapts: every search round (a learning-rate range extended past an edge,
    an epoch doubling) and every added seed run, each extra trial-epoch at the sweep's measured average cost."""
    t = calibration.totals
    planned = t["trial_epochs_halving"]
    _, round_epochs = most_added_by_rounds(plan)
    seeds = plan.spec.max_seeds / len(plan.spec.initial_seeds)
    most = round((planned + round_epochs) * seeds)
    hours = t["device_hours_halving"] * most / planned if planned else 0.0
    if most == planned:
        return "Worst case: as planned (no search rounds or added seeds can run)"
    return (f"Worst case, if every search round and added seed runs: {most:,} trial-epochs, about {hours:.2f} "
            f"device-hours (planned: {planned:,}, {t['device_hours_halving']:.2f})")


def main(argv: list[str] | None = None) -> int:
    from sweep.plan.spec import DEFAULT_SPEC, chosen_arms, load_specs
    from sweep.plan.validate import make_plan

    parser = argparse.ArgumentParser(prog="python -m sweep.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--arm", action="append", default=[])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-root", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        path = Path(args.config) if args.config else DEFAULT_SPEC
        specs = chosen_arms(load_specs(path, args.overrides), args.arm)
        root = args.data_root or os.environ.get("MEDPEFT_DATA_ROOT")
        plans = [(make_plan(spec, path, root, allow_missing=True), spec.name) for spec in specs]
        return run(plans, args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
