"""`python -m sweep.launch`: plan a sweep, run it as one Ray Tune experiment, print the per-cell table.

    python -m sweep.launch                                  # the quickstart sweep
    python -m sweep.launch --config search_spaces/paper.yaml --dry-run
    python -m sweep.launch --config my.yaml --data-root /data --set train.epochs=20
    python -m sweep.launch --config my.yaml --resume        # after a crash, Ctrl-C or preemption
    python -m sweep.launch --config search_spaces/paper.yaml --arm t2i   # one arm of a spec with `arms:`

A spec with `arms:` runs its arms one after another, each a sweep of its own named `<name>-<arm>` (its own Ray
Tune experiment, MLflow experiment and report); every arm's input is checked before the first one starts.

Exit codes: 0 done, 2 bad input (nothing was created), 3 storage lost mid-sweep (resumable once it is back),
130 interrupted (resumable), 1 the sweep ended but some cell has no successful trial (every trial failed), or
anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import InputError
from sweep.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_INTERRUPTED, EXIT_STORAGE
from sweep.plan.spec import NAME_PATTERN, SpecError, SweepSpec, load_specs

ADDRESS_TIMEOUT_S = 5  # a cluster's head answers a connection at once; a wrong address never does


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
    p.add_argument("--arm", action="append", default=[], metavar="ID",
                   help="run only this arm of a spec with `arms:` (repeatable; default: every arm, in order)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: measure every (backbone, method) group here and estimate device-hours and "
                        "cost (see python -m sweep.calibrate)")
    from sweep.calibrate import add_arguments

    add_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet()
    try:
        sweeps = _setup(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from sweep.report import launcher_output

    if args.dry_run:
        print("\n\n".join(launcher_output.dry_run(s.plan, s.name) for s in sweeps))
        if args.calibrate:
            from sweep import calibrate

            print()
            try:
                return calibrate.run([(s.plan, s.name) for s in sweeps], args)
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_BAD_INPUT
        return 0
    for note in dict.fromkeys(note for s in sweeps for note in s.plan.notes):
        print(launcher_output.banner(note), flush=True)

    from sweep.plan.datasets import prepare_data
    from sweep.report.outcome import sweep_outcome
    from sweep.tune.run import StorageLost, run_sweep, save_inputs

    try:  # every arm's data, before any arm starts: bad data stops the whole sweep now
        prepared = [prepare_data(s.plan, s.storage, log=lambda line: print(line, flush=True)) for s in sweeps]
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # a Ctrl-C while the data is read: nothing of the sweep exists yet
        print("\ninterrupted while preparing the data: no sweep was started; run the same command again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    code = 0
    for sweep, data in zip(sweeps, prepared, strict=True):
        plan, name, storage = sweep.plan, sweep.name, sweep.storage
        if not sweep.resume:
            save_inputs(storage, name, plan, sweep.data_root, sweep.mlflow_uri, args.overrides)
        print(f"Sweep {name!r}: {len(plan.cells)} cells, {plan.total_trials} trials -> {storage.join(name)}",
              flush=True)
        started = time.monotonic()
        try:
            parent_run_id = run_sweep(plan, name, storage, sweep.mlflow_uri, data, resume=sweep.resume,
                                      address=args.address)
        except StorageLost as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_STORAGE
        except KeyboardInterrupt:  # Ctrl-C while Ray started (Tune handles one during the sweep itself)
            print(f"\ninterrupted while Ray started: nothing ran. Continue it with: python -m sweep.launch --name "
                  f"{name} --storage {storage.uri} --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        outcome = sweep_outcome(plan, name, sweep.mlflow_uri, parent_run_id, started)
        print(launcher_output.summary(plan, name, outcome, storage, sweep.mlflow_uri))
        if not outcome.complete:
            return EXIT_INTERRUPTED
        empty = outcome.cells.loc[~outcome.cells["has_result"], "cell_key"].tolist()
        if empty:
            print(f"error: {len(empty)} cell(s) of {name!r} ended with every trial failed (first: {empty[0]}); the "
                  "error.txt paths above say why", file=sys.stderr)
            code = EXIT_FAILED_CELLS
    return code


@dataclass
class Setup:
    """One sweep to run: a spec without arms, or one arm of a spec with `arms:`."""

    plan: Any
    name: str
    storage: Any
    mlflow_uri: str
    data_root: str | None
    resume: bool


def _setup(args: argparse.Namespace) -> list[Setup]:
    """Everything that can be wrong with the input, checked before anything is created."""
    from sweep.plan.spec import DEFAULT_SPEC, chosen_arms
    from sweep.plan.validate import make_plan
    from sweep.store.mlflow_experiment import check_tracking_uri, without_credentials
    from sweep.store.storage import parse_storage
    from sweep.tune.run import load_inputs

    spec_path = Path(args.config) if args.config else DEFAULT_SPEC
    storage = parse_storage(args.storage)
    if args.name is not None and not re.fullmatch(NAME_PATTERN, args.name):
        raise SpecError(f"--name {args.name!r}: a sweep's name is its folder in the storage and its MLflow experiment, "
                        "so it may hold only letters, digits, '_', '.' and '-', starting with a letter or digit "
                        "(e.g. --name my-sweep)")
    if args.resume and args.overrides:
        raise SpecError("--set cannot change a sweep on --resume: it continues as it was started")
    if args.calibrate and not args.dry_run:
        raise SpecError("--calibrate goes with --dry-run (or run python -m sweep.calibrate)")
    specs = chosen_arms(load_specs(spec_path, args.overrides), args.arm)
    data_root = args.data_root or os.environ.get("MEDPEFT_DATA_ROOT") or None
    checked_storage = False
    setups = []
    for spec in specs:
        name = (f"{args.name}-{spec.arm}" if spec.arm else args.name) if args.name else spec.name
        # With arms, --resume also starts an arm the interrupted run never reached.
        resume = args.resume and (len(specs) == 1 or not storage.is_empty_dir(storage.join(name)))
        if resume:
            _check_name(storage, name, "", resume=True)
            inputs = load_inputs(storage, name)
            started = SweepSpec.model_validate(inputs["spec"])
            if args.config and not _same_spec(args.config, spec.arm, inputs.get("overrides") or [], started):
                changed = " as it was then (the file has changed since)" if _same_path(args.config,
                                                                                      inputs["spec_path"]) else ""
                raise SpecError(f"--config {args.config} cannot change a sweep on --resume: {name!r} was started "
                                f"with {inputs['spec_path']}{changed} and continues as it was started. Leave "
                                f"--config out to continue it, or start {args.config} as a new sweep with --name "
                                "NEW_NAME")
            spec, path = started, Path(inputs["spec_path"])
            mlflow_uri = without_credentials(args.mlflow_uri or inputs["mlflow_uri"])
            if not args.dry_run:  # the tracking store it wrote to may be down now (or --mlflow-uri names another)
                check_tracking_uri(mlflow_uri)
            root = args.data_root or inputs["data_root"]
        else:
            path, root = spec_path, data_root
            mlflow_uri = without_credentials(args.mlflow_uri or _default_tracking_uri(storage))
            if not args.dry_run:
                if not checked_storage:  # first: the default tracking store lives in the storage
                    storage.preflight()
                    checked_storage = True
                check_tracking_uri(mlflow_uri)
                _check_name(storage, name, mlflow_uri, resume=False)
        plan = make_plan(spec, path, root, allow_missing=args.dry_run)
        if not args.dry_run and not (args.address or os.environ.get("RAY_ADDRESS")):
            check_local_resources(plan)
        setups.append(Setup(plan, name, storage, mlflow_uri, root, resume))
    if not args.dry_run:
        check_ray_address(args.address, os.environ.get("RAY_ADDRESS"))
    return setups


def check_ray_address(address: str | None, environment: str | None) -> None:
    """A cluster address nothing answers at is an error now: Ray would wait for it for minutes, after the sweep's
    folder and MLflow experiment had been created. "local" and "auto" are Ray's own words (a new local Ray; the
    cluster `ray start` left on this machine), which ray.init resolves itself."""
    given, where = (address, "--address") if address else (environment, "RAY_ADDRESS")
    if not given or given in ("local", "auto"):
        return
    host, _, port = given.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"{where} {given!r}: a Ray cluster address is HOST:PORT (the head's GCS, e.g. "
                        "10.0.0.5:6379) or ray://HOST:PORT (Ray Client)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as e:
        raise SpecError(f"{where} {given!r}: no Ray cluster answers there ({e.strerror or e}). Start its head "
                        f"(ray start --head --port {port}) or fix {where}; leave it out for a local Ray") from None


def _same_spec(config: str, arm: str | None, overrides: list[str], started: SweepSpec) -> bool:
    """The spec --config gives now (with the --set the sweep was started with) is the one it was started with.
    Compared as read and validated, not by file name: a spec file edited since the start (or its `base:`) is
    another spec under the same name, and an identical copy elsewhere is the same spec. Both sides go through
    today's SweepSpec, so a sweep saved before a field was added is not refused for that field's default."""
    try:
        given = next((s for s in load_specs(config, overrides) if s.arm == arm), None)
    except SpecError:  # the started --set no longer applies to the file: it has changed
        return False
    return given is not None and given.model_dump(mode="json") == started.model_dump(mode="json")


def _same_path(given: str, started_with: str) -> bool:
    return Path(given).resolve() == Path(started_with).resolve()


def check_local_resources(plan) -> None:
    """On a local Ray (no cluster address) no node can be added: a trial worker that needs more CPUs or GPUs than
    this machine offers would wait forever, so it is an error before anything starts."""
    import torch

    res = plan.spec.resources
    gpus = res.num_gpus if res.num_gpus is not None else torch.cuda.device_count()
    cpus = res.num_cpus if res.num_cpus is not None else os.cpu_count() or 1
    for cell in plan.cells:
        r = cell.resources
        if r.gpus > gpus or r.cpus > cpus:
            raise SpecError(
                f"{cell.method.key} trials need {r.cpus:g} CPUs and {r.gpus:g} GPUs per worker, and this machine "
                f"offers {cpus} CPUs and {gpus} GPUs (a local Ray cannot add nodes, so they would wait forever). "
                "Lower resources.gpus_per_trial / cpus_per_trial (or per_method), or run on a cluster with --address")


def _default_tracking_uri(storage) -> str:
    from sweep.store.mlflow_experiment import default_tracking_uri

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
        from sweep.store.mlflow_experiment import find_experiment

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
