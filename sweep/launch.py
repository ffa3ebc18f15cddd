"""`python -m sweep.launch`: plan a sweep, run it as one Ray Tune experiment, print the per-cell table.

    python -m sweep.launch                                  # the quickstart sweep
    python -m sweep.launch --config search_spaces/paper.yaml --dry-run
    python -m sweep.launch --config my.yaml --data-root /data --set train.epochs=20
    python -m sweep.launch --config my.yaml --resume        # after a crash, Ctrl-C or preemption

Exit codes: 0 done, 2 bad input (nothing was created), 3 storage lost mid-sweep (resumable once it is back),
130 interrupted (resumable), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from sweep.spec import SpecError, load_spec

EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="sweep spec YAML (default: search_spaces/quickstart.yaml)")
    p.add_argument("--name", default=None, help="sweep name (default: the spec's name)")
    p.add_argument("--storage", default=None, help="where sweeps live (default: ./results)")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite in the storage)")
    p.add_argument("--data-root", default=None, help="data root (default: $MEDPEFT_DATA_ROOT)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    p.add_argument("--dry-run", action="store_true", help="print the grid and what is missing, then exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet()
    try:
        setup = _setup(args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan, name, storage, mlflow_uri, data_root = setup

    from sweep import report_text

    if args.dry_run:
        print(report_text.dry_run(plan, name))
        return 0
    for note in plan.notes:
        print(report_text.banner(note), flush=True)

    from sweep.plan import prepare_data
    from sweep.run import StorageLost, run_sweep, save_inputs

    try:
        prepared = prepare_data(plan, storage, log=lambda line: print(line, flush=True))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.resume:
        save_inputs(storage, name, plan, data_root, mlflow_uri)
    print(f"Sweep {name!r}: {len(plan.cells)} cells, {plan.total_trials} trials -> {storage.join(name)}", flush=True)
    try:
        outcome = run_sweep(plan, name, storage, mlflow_uri, prepared, resume=args.resume, address=args.address)
    except StorageLost as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE
    print(report_text.summary(plan, name, outcome, storage, mlflow_uri))
    return 0 if outcome.complete else EXIT_INTERRUPTED


def _setup(args: argparse.Namespace):
    """Everything that can be wrong with the input, checked before anything is created."""
    from sweep.plan import make_plan
    from sweep.run import load_inputs
    from sweep.spec import DEFAULT_SPEC, SweepSpec
    from sweep.storage import parse_storage
    from sweep.tracking import without_credentials

    spec_path = Path(args.config) if args.config else DEFAULT_SPEC
    storage = parse_storage(args.storage)
    if args.resume:
        name = args.name or load_spec(spec_path).name
        _check_name(storage, name, "", resume=True)
        if args.overrides:
            raise SpecError("--set cannot change a sweep on --resume: it continues as it was started")
        inputs = load_inputs(storage, name)
        spec = SweepSpec.model_validate(inputs["spec"])
        spec_path = Path(inputs["spec_path"])
        mlflow_uri = without_credentials(args.mlflow_uri or inputs["mlflow_uri"])
        data_root = args.data_root or inputs["data_root"]
    else:
        spec = load_spec(spec_path, args.overrides)
        name = args.name or spec.name
        mlflow_uri = without_credentials(args.mlflow_uri or _default_tracking_uri(storage))
        data_root = args.data_root or os.environ.get("MEDPEFT_DATA_ROOT") or None
        if not args.dry_run:
            storage.preflight()
            _check_name(storage, name, mlflow_uri, resume=False)
    plan = make_plan(spec, spec_path, data_root, allow_missing=args.dry_run)
    return plan, name, storage, mlflow_uri, data_root


def _default_tracking_uri(storage) -> str:
    from sweep.tracking import default_tracking_uri

    return default_tracking_uri(storage)


def _check_name(storage, name: str, mlflow_uri: str, resume: bool) -> None:
    """Never overwrite a sweep: a name that exists needs --resume, and --resume needs a sweep to resume."""
    exists = not storage.is_empty_dir(storage.join(name))
    if resume and not exists:
        raise SpecError(f"--resume: there is no sweep {name!r} in {storage.uri}; start it without --resume")
    if not resume and exists:
        raise SpecError(
            f"a sweep named {name!r} already exists in {storage.uri}. Continue it with --resume, "
            "or start a new one with --name NEW_NAME (results are never overwritten)"
        )
    if not resume and mlflow_uri.startswith("sqlite:///") and Path(mlflow_uri.removeprefix("sqlite:///")).exists():
        from sweep.tracking import find_experiment

        if find_experiment(mlflow_uri, name) is not None:
            raise SpecError(
                f"MLflow ({mlflow_uri}) already holds a sweep named {name!r} (its Tune state is gone). "
                "Use --name NEW_NAME, or delete that MLflow experiment first"
            )


def _quiet() -> None:
    """Ray, timm and peft talk a lot; the sweep prints its own progress."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is the tracker
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "600")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
