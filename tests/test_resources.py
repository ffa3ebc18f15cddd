"""Per-trial resources from the spec: CPUs, fractional GPUs (grown to fit GPU memory), workers, per-method
overrides; what Tune reserves per trial; how many trials run at once."""

from __future__ import annotations

from types import SimpleNamespace

from sweep.plan.grid import method_resources
from sweep.plan.spec import SweepSpec
from sweep.tune.run import concurrent_trials
from trainables.trainable import DRIVER_RESOURCE, trial_resources


def spec(**resources) -> SweepSpec:
    return SweepSpec.model_validate({"name": "r", "datasets": [{"name": "synthetic"}],
                                     "backbones": [{"name": "test_resnet"}], "methods": ["full", "bitfit"],
                                     "resources": resources})


def test_per_method_gpu_share_and_memory():
    s = spec(gpus_per_trial=0.25, cpus_per_trial=2, per_method={"full": {"gpus": 1, "workers": 2}})
    assert method_resources(s, "bitfit").gpus == 0.25 and method_resources(s, "bitfit").cpus == 2
    full = method_resources(s, "full")
    assert (full.gpus, full.workers) == (1, 2)
    # 10 GB per trial on 24 GB GPUs: a quarter GPU would put four (40 GB) on one card; the share grows to 10/24.
    s = spec(gpus_per_trial=0.25, gpu_memory_gb=24, gpu_memory_per_trial_gb=10,
             per_method={"bitfit": {"gpu_memory_gb": 4}})
    assert method_resources(s, "full").gpus == round(10 / 24, 4)
    assert method_resources(s, "bitfit").gpus == 0.25  # 4 GB fits in a quarter of 24 GB


def test_what_tune_reserves_per_trial():
    inline = trial_resources({"resources": {"cpus": 2, "gpus": 0.25, "num_workers": 1}})
    assert inline.bundles == [{"CPU": 2.0, "GPU": 0.25}]
    nested = trial_resources({"resources": {"cpus": 4, "gpus": 1, "num_workers": 2}})
    assert nested.bundles == [{DRIVER_RESOURCE: 1}]  # the TorchTrainer reserves the workers itself


def test_concurrent_trials_follow_the_lightest_cells_resources(monkeypatch):
    import ray

    s = spec(gpus_per_trial=0.25, cpus_per_trial=2, per_method={"full": {"gpus": 1}})
    cells = [SimpleNamespace(resources=method_resources(s, m)) for m in ("full", "bitfit")]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16, "GPU": 2})
    assert concurrent_trials(SimpleNamespace(cells=cells)) == 8  # bitfit: 2 GPUs / 0.25 = 8 (CPUs allow 8 too)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6, "GPU": 2})
    assert concurrent_trials(SimpleNamespace(cells=cells)) == 3  # CPUs bind first: 6 / 2
