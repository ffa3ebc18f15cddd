"""The one Tune trainable behind every task: runs the task's worker function the cheap way when it can.

- One worker (the common PEFT case, often on a fractional GPU): the worker function runs in the Tune trial's own
  process through a Tune-backed session. A nested TorchTrainer would cost 15-25 s per trial for nothing.
- Several workers (DDP: full fine-tuning of large models, diffusion): a TorchTrainer is built inside the trial,
  with a run name derived from the trial key (no timestamps), and metrics come back to Tune through
  TuneReportCallback. Either way rank 0 checkpoints to the trial's CheckpointStore, so a restarted trial
  resumes the same way on both paths.
"""

from __future__ import annotations

import os
import re
from typing import Any

from trainables.session import TrainSession, TuneSession, use_session
from trainables.tasks import get_task


def nested(config: dict[str, Any]) -> bool:
    """Whether the trial runs in a TorchTrainer. MEDPEFT_FORCE_NESTED=1 nests one-worker trials too: the
    benchmark uses it to measure what nesting costs."""
    return int(config["resources"].get("num_workers", 1)) > 1 or os.environ.get("MEDPEFT_FORCE_NESTED") == "1"


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: `tune.with_resources(run_trial, trial_resources)`."""
    task = get_task(config["task"])
    if not nested(config):
        with use_session(TuneSession()) as session:
            task.worker(config)
        if not session.reports:
            # Tune would fail the whole sweep on a trial that ends without its metric; failing the trial keeps
            # the sweep going (it is retried, then recorded as an error).
            raise RuntimeError(f"{config['tracking']['trial_key']} ended without reporting any epoch")
    else:
        _fit_torch_trainer(config)


# A custom resource held by the driver of a multi-worker trial instead of CPUs: its TorchTrainer reserves the
# workers' CPUs/GPUs itself, and a driver holding a CPU share while its workers wait for that CPU deadlocks small
# machines. Only nodes that may host drivers (on a cluster: on-demand, never spot) declare it.
DRIVER_RESOURCE = "medpeft_driver"


def trial_resources(config: dict[str, Any]):
    """What Tune reserves for a trial: the worker's CPUs/GPUs, or one driver slot for a multi-worker trial."""
    from ray.tune import PlacementGroupFactory

    res = config["resources"]
    if not nested(config):
        return PlacementGroupFactory([{"CPU": float(res["cpus"]), "GPU": float(res["gpus"])}])
    return PlacementGroupFactory([{DRIVER_RESOURCE: 1}])


def train_run_name(trial_key: str) -> str:
    return "train-" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", trial_key)


def _ddp_worker(config: dict[str, Any]) -> None:
    with use_session(TrainSession()):
        get_task(config["task"]).worker(config)


def _fit_torch_trainer(config: dict[str, Any]) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = config["resources"]
    storage = f"{config['storage']}/train" if config.get("storage") else tune.get_context().get_trial_dir()
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(res["num_workers"]),
            use_gpu=float(res["gpus"]) > 0,
            resources_per_worker={"CPU": float(res["cpus"]), **({"GPU": float(res["gpus"])} if res["gpus"] else {})},
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name(config["tracking"]["trial_key"]),
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    trainer.fit()
