"""Run a planned sweep as one Ray Tune experiment (or resume it). What it ended with is the report's to read
(sweep.report.outcome): the run ends when Tune's does."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sweep.errors import StorageError
from sweep.plan.grid import base_config
from sweep.plan.validate import Plan
from sweep.store import mlflow_experiment
from sweep.store.storage import Storage
from sweep.tune import ray_sessions
from sweep.tune.storage_watch import StorageWatch
from trainables.checkpoints import safe_dirname

SWEEP_FILE = "medpeft-sweep.json"  # what the sweep was started with; --resume reads it back


class StorageLost(RuntimeError):
    """The sweep's storage stopped answering mid-sweep."""


def save_inputs(storage: Storage, name: str, plan: Plan, data_root: str | None, mlflow_uri: str,
                overrides: list[str] | tuple[str, ...] = ()) -> None:
    inputs = {
        "spec": plan.spec.model_dump(mode="json"),
        "spec_path": str(plan.spec_path),
        "overrides": list(overrides),  # the --set it was started with: --resume --config compares with them
        "data_root": data_root,
        "mlflow_uri": mlflow_uri,
    }
    storage.write_text(storage.join(name, SWEEP_FILE), json.dumps(inputs, indent=2))


def load_inputs(storage: Storage, name: str) -> dict:
    path = storage.join(name, SWEEP_FILE)
    if not storage.exists(path):
        raise StorageError(f"{storage.join(name)} holds no {SWEEP_FILE}: it was not started by sweep.launch")
    return json.loads(storage.read_text(path))


def run_sweep(plan: Plan, name: str, storage: Storage, mlflow_uri: str, prepared: dict[str, dict], resume: bool,
              address: str | None) -> str:
    """Run (or resume) the sweep's Tune experiment to its end; returns the id of the sweep's MLflow parent run."""
    import ray
    from ray import tune

    from sweep.tune.callbacks import NodeLossIsNotAFailure, SweepProgress
    from sweep.tune.scheduler import SCHEDULERS
    from sweep.tune.searcher import CellPlan, CellSearcher, SweepState
    from trainables.trainable import run_trial, trial_resources

    experiment_dir = storage.join(name)
    artifacts = storage.join("mlartifacts") if storage.remote else Path(storage.join("mlartifacts")).as_uri()
    ids = mlflow_experiment.prepare(mlflow_uri, name, artifacts, plan.cells,
                           json.dumps(plan.spec.model_dump(mode="json"), indent=2), plan.notes)
    trainable = tune.with_resources(run_trial, trial_resources)
    _start_ray(plan, address)
    watch = StorageWatch(storage)
    # Tune's concurrency limit counts paused trials as running: with synchronous halving, trials paused at a rung
    # would then block the very trials they wait for. Paused trials hold no resources, so only the number of
    # trials queued ahead (pending) is limited, to the slots.
    kind = SCHEDULERS[plan.spec.scheduler.type]
    pausing = kind.synchronous
    try:
        slots = plan.spec.resources.max_concurrent_trials or concurrent_trials(plan)
        if pausing:
            os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(slots)
        if resume and not tune.Tuner.can_restore(experiment_dir):
            # Stopped before Tune saved its state (tuner.pkl, written before any trial starts): Ctrl-C while Ray was
            # starting. Nothing ran, so it starts now, from the inputs it was started with.
            print(f"Sweep {name!r} had not started training when it was stopped: starting it now", flush=True)
            resume = False
        if resume:
            tuner = tune.Tuner.restore(experiment_dir, trainable, resume_errored=True)
        else:
            state = SweepState()
            cells = [
                CellPlan(c.key, c.space, c.budget,
                         {**base_config(plan.spec, c, ids.for_cell(name, c), prepared.get(c.dataset.key)),
                          "storage": experiment_dir})
                for c in plan.cells
            ]
            spec = plan.spec
            extender = adaptive_seeds(plan, name, mlflow_uri, artifacts, prepared, experiment_dir)
            searcher = CellSearcher(cells=cells, state=state, sampler=spec.search.sampler,
                                    grid_points=plan.grid_points, seed=spec.search.seed,
                                    cell_by_cell=kind.synchronous, extend=extender,
                                    extend_range=spec.search.extend, lr_limits=spec.search.lr_limits,
                                    max_extensions=spec.search.max_extensions,
                                    max_epoch_doublings=spec.search.max_epoch_doublings,
                                    flat_tolerance=spec.search.flat_tolerance,
                                    max_trial_epochs=spec.search.max_trial_epochs,
                                    round_cost=spec.scheduler.most_trial_epochs)
            scheduler = kind.build(plan, state)
            progress = SweepProgress(state, mlflow_uri, ids.experiment_id, plan.total_trials, plan.selection.val,
                                     plan.max_epochs, frozenset(c.key for c in plan.cells))
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=-1,
                    reuse_actors=True,
                    max_concurrent_trials=None if pausing else slots,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=tune_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage.uri,
                    verbose=0,
                    callbacks=[progress, NodeLossIsNotAFailure()],
                    failure_config=tune.FailureConfig(max_failures=1),
                ),
            )
        with watch:
            tuner.fit()
    except (KeyboardInterrupt, OSError, RuntimeError):
        # Tune's last act reads the experiment state back from the storage: gone storage surfaces here.
        if watch.error is None and storage.reachable():
            raise
        watch.error = watch.error or "the experiment state could not be read back"
    finally:
        ray.shutdown()
        ray_sessions.forget_session()
        if pausing:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
    if watch.error:
        raise StorageLost(f"storage {storage.uri} stopped answering ({watch.error}). The sweep stopped; every result "
                          f"up to now is kept. Once the storage is back: python -m sweep.launch --name {name} "
                          f"--storage {storage.uri} --resume")
    return ids.parent_run_id


def adaptive_seeds(plan: Plan, name: str, mlflow_uri: str, artifacts: str, prepared: dict[str, dict],
                   experiment_dir: str):
    """The searcher's SeedExtender where the spec asks for adaptive seeds (`seeds: {initial, max}`), else None."""
    from sweep.plan.spec import AdaptiveSeeds
    from sweep.tune.adaptive import SeedExtender

    spec = plan.spec
    if not isinstance(spec.seeds, AdaptiveSeeds):
        return None
    return SeedExtender(name, mlflow_uri, artifacts, spec, list(plan.cells), prepared, experiment_dir,
                        spec.report.rope, f"{experiment_dir}/predictions-cache" if "://" not in experiment_dir
                        else str(Path.cwd() / f"{name}-predictions-cache"))


def concurrent_trials(plan: Plan) -> int:
    """How many trials the cluster holds at once, for the lightest cell's resources. Tune keeps that many trials
    pending for a custom searcher only when told (otherwise one: slots stay empty between trials)."""
    import ray

    from sweep.plan.cost import slots_for

    available = ray.cluster_resources()
    return slots_for(plan, available.get("CPU", 0), available.get("GPU", 0))


def trial_name(trial) -> str:
    return trial.config["tracking"]["trial_key"]


def tune_trial_dirname(trial) -> str:
    """Tune's folder for a trial: its key (as its checkpoint folder names it), then Tune's trial id."""
    return f"{safe_dirname(trial.config['tracking']['trial_key'])[-100:]}_{trial.trial_id}"


CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def hide_credentials_from_ray() -> None:
    """Ray Tune copies AWS keys from the driver's environment into every trial actor's runtime_env, and Ray's
    runtime-env agent writes runtime_envs into its logs. Move keys given as environment variables into a private
    credentials file instead (the AWS SDKs, boto3 and pyarrow read it; workers find it through the inherited
    AWS_SHARED_CREDENTIALS_FILE), so no secret is ever written into a log."""
    import atexit
    import tempfile

    keys = {name: os.environ[name] for name in CREDENTIAL_VARIABLES if name in os.environ}
    if "AWS_SECRET_ACCESS_KEY" not in keys:
        return
    folder = tempfile.mkdtemp(prefix="medpeft-aws-")
    path = Path(folder) / "credentials"
    lines = ["[default]", f"aws_access_key_id = {keys.get('AWS_ACCESS_KEY_ID', '')}",
             f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}"]
    token = keys.get("AWS_SESSION_TOKEN") or keys.get("AWS_SECURITY_TOKEN")
    if token:
        lines.append(f"aws_session_token = {token}")
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")
    atexit.register(lambda: path.unlink(missing_ok=True))
    for name in (*CREDENTIAL_VARIABLES, "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(path)


def _start_ray(plan: Plan, address: str | None) -> None:
    import ray

    hide_credentials_from_ray()
    from trainables.trainable import DRIVER_RESOURCE

    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {}
    if not address:
        # A local Ray of our own: never attach to a stale cluster file from an earlier `ray start`. First, what a
        # killed launcher before us left of its own (see ray_sessions).
        for session, count in ray_sessions.clean_up_dead_sessions():
            print(f"Stopped {count} Ray process(es) left by a launcher that was killed (session {session})",
                  flush=True)
        address = "local"
        kwargs = {
            "num_cpus": plan.spec.resources.num_cpus,
            "num_gpus": plan.spec.resources.num_gpus,
            "object_store_memory": 256 * 2**20,
            "include_dashboard": False,
            "resources": {DRIVER_RESOURCE: 64},
        }
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
             **kwargs)
    if address == "local":
        ray_sessions.record_session(ray._private.worker._global_node.get_session_dir_path())
