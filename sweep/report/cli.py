"""`python -m sweep.report`: a sweep's runs in MLflow become the study's tables and plots.

    python -m sweep.report --name quickstart                       # -> results/quickstart/report/
    python -m sweep.report --name paper --format md,html --out out/
    python -m sweep.report --compare vit-sweep resnet-sweep        # two sweeps side by side

Writes results.parquet / results.csv (one row per trial), report.md and a self-contained report.html (tables,
figures embedded), the PNG figures, and logs them all as artifacts of the sweep's parent MLflow run. Works on a
sweep that is still running or was interrupted: the report says which cells are incomplete.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sweep.errors import InputError
from sweep.exit_codes import EXIT_BAD_INPUT
from sweep.references import available as available_references
from sweep.report.build import FORMATS, build, compare
from sweep.report.console_table import count
from sweep.results.comparisons import DEFAULT_ROPE
from sweep.store import mlflow_experiment
from sweep.store.storage import Storage, parse_storage
from trainables.contract import SCORE_TOLERANCE


def _tracking_uri(storage: Storage, name: str, given: str | None) -> str:
    if given:
        return mlflow_experiment.without_credentials(given)
    saved = storage.join(name, "medpeft-sweep.json")
    if storage.exists(saved):
        return json.loads(storage.read_text(saved))["mlflow_uri"]
    return mlflow_experiment.default_tracking_uri(storage)


def _saved_spec(storage: Storage, name: str) -> dict:
    """The spec the sweep was started with (its report.rope, its seeds), or {} for a sweep without one."""
    saved = storage.join(name, "medpeft-sweep.json")
    return json.loads(storage.read_text(saved)).get("spec", {}) if storage.exists(saved) else {}


def _out(storage: Storage, given: str | None, *parts: str) -> Path:
    if given:
        return Path(given)
    return Path(storage.join(*parts)) if not storage.remote else Path.cwd() / "-".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="the sweep (as given to sweep.launch)")
    parser.add_argument("--compare", nargs=2, metavar=("NAME_A", "NAME_B"))
    parser.add_argument("--storage", default="results")
    parser.add_argument("--mlflow-uri", default=None)
    parser.add_argument("--out", default=None, help="default: <storage>/<name>/report")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--rope", type=float, default=None,
                        help="region of practical equivalence in points (default: the spec's report.rope, "
                             f"{DEFAULT_ROPE:g})")
    parser.add_argument("--reference", default=None,
                        help="put a published study's numbers beside ours, e.g. dutt2024 (shipped: "
                             f"{', '.join(available_references())})")
    args = parser.parse_args(argv)
    try:
        storage = parse_storage(args.storage)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if unknown := set(formats) - set(FORMATS):
        print(f"error: unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.compare:
            a, b = args.compare
            out = _out(storage, args.out, "compare")
            path = compare(_tracking_uri(storage, a, args.mlflow_uri), a, _tracking_uri(storage, b, args.mlflow_uri),
                           b, out, DEFAULT_ROPE if args.rope is None else args.rope)
            print(f"comparison written to {path}")
            return 0
        if not args.name:
            print("error: give --name NAME (or --compare NAME_A NAME_B)", file=sys.stderr)
            return EXIT_BAD_INPUT
        out = _out(storage, args.out, args.name, "report")
        if args.reference and args.reference not in available_references():
            print(f"error: no reference study {args.reference!r}; shipped: {', '.join(available_references())}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.rope is not None and not (args.rope >= 0):
            print(f"error: --rope {args.rope:g} is negative; give a half-width in points, e.g. --rope 1",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        saved = _saved_spec(storage, args.name)
        rope = args.rope if args.rope is not None else saved.get("report", {}).get("rope", DEFAULT_ROPE)
        seeds = saved.get("seeds")
        adaptive = (int(seeds["initial"]), int(seeds["max"])) if isinstance(seeds, dict) else None
        tolerance = float(saved.get("search", {}).get("flat_tolerance", SCORE_TOLERANCE))
        report = build(_tracking_uri(storage, args.name, args.mlflow_uri), args.name, out, formats,
                       reference=args.reference, rope=float(rope), adaptive=adaptive, tolerance=tolerance)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    incomplete = int((~report.status["complete"]).sum()) if len(report.status) else 0
    print(f"{len(report.trials)} trials, {len(report.status)} cells ({incomplete} incomplete)")
    for path in report.files:
        print(f"  {path}")
    print(f"Best per cell: {int(report.trials['is_best_in_cell'].sum())} trials tagged is_best_in_cell=true in MLflow; "
          f"{count(len(report.files))} files logged to the sweep's parent run (artifacts/report).")
    return 0
