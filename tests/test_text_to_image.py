"""Text-to-image: FID/KID against independent computations, the training loop without Ray (reports, resume
equivalence with reloaded weights), a tiny sweep end to end with MLflow, and bad input caught before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from sweep.launch import main
from tests.conftest import SHARED_DATA, StoppingSession, launch, run_worker
from trainables.fid import FeatureExtractor, feature_extractor, fid, frechet_distance, kid
from trainables.session import LocalSession
from trainables.text_to_image import Precision, train_loop_per_worker

NIH = SHARED_DATA / "nih_cxr14_64"


# --- FID and KID ----------------------------------------------------------------------------------------------

def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's matrix square root (as in pytorch-fid), the reference we check against."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * root))


def random_covariance(rng, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    sigma1, sigma2 = random_covariance(rng, d), random_covariance(rng, d)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(scipy_frechet(mu1, sigma1, mu2, sigma2),
                                                                      rel=1e-6)


def test_frechet_distance_of_singular_covariances_matches_scipy():
    """Fewer samples than feature dimensions (every small FID set) gives singular covariances."""
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(20, 48)), rng.normal(loc=0.3, size=(20, 48))
    ours = fid(real, fake)
    reference = scipy_frechet(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert ours == pytest.approx(reference, rel=1e-4)


def test_frechet_distance_closed_forms():
    """Same Gaussian: 0. Commuting (diagonal) covariances: sum((sqrt(a) - sqrt(b))^2) plus the mean term."""
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 8)
    assert frechet_distance(np.zeros(8), sigma, np.zeros(8), sigma) == pytest.approx(0, abs=1e-9)
    a, b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    mu = rng.normal(size=8)
    expected = (mu**2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, np.diag(a), np.zeros(8), np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    real, same = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    near, far = rng.normal(0.2, size=(200, 32)), rng.normal(1.0, size=(200, 32))
    k_same, k_near, k_far = (kid(real, x, subset_size=100) for x in (same, near, far))
    assert abs(k_same) < 0.02 < k_near < k_far


def test_kid_matches_a_direct_unbiased_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 8)), rng.normal(0.5, size=(30, 8))

    def k(a, b):
        return (a @ b.T / 8 + 1) ** 3

    m = len(x)
    direct = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
              - 2 * k(x, y).mean())
    assert kid(x, y, subset_size=30, subsets=3) == pytest.approx(direct, rel=1e-9)  # subsets of all = the whole set


def test_feature_extractors_offline_and_named_errors(tmp_path):
    extractor = feature_extractor("auto")  # no Inception weights here: the offline EfficientNet-Lite0
    assert "efficientnet-lite0" in extractor.name
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    features = extractor(images)
    assert features.shape == (3, 1280) and np.isfinite(features).all()
    cached = extractor.cached(lambda: images, "k", tmp_path)
    again = extractor.cached(lambda: pytest.fail("computed twice"), "k", tmp_path)
    np.testing.assert_array_equal(cached, again)
    from trainables.fid import FeaturesError

    with pytest.raises(FeaturesError, match="use auto, inception-v3"):
        feature_extractor("vgg")
    with pytest.raises(FeaturesError, match="no such TorchScript file"):
        feature_extractor(str(tmp_path / "missing.pt"))


def test_a_user_torch_module_is_a_feature_extractor():
    extractor = feature_extractor("module:tests.test_text_to_image:pooled_pixels")
    assert isinstance(extractor, FeatureExtractor) and not extractor.cacheable
    assert extractor(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape == (2, 3)


def pooled_pixels() -> torch.nn.Module:
    """A feature extractor a user might name: mean colour."""
    return torch.nn.AdaptiveAvgPool2d(1)


# --- the training loop ----------------------------------------------------------------------------------------

def t2i_config(storage: Path | None = None, **train) -> dict:
    return {
        "storage": str(storage) if storage else None,
        "task": "t2i",
        "seed": 0,
        "data": {"name": "synthetic", "options": {"train": 48, "val": 16, "test": 16}, "image_size": 32},
        "backbone": {"name": "tiny-sd", "weights": "random", "kwargs": {"text_encoder": "minilm"}},
        "method": {"name": "lora"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "val_pairs": 8, "eval_prompts": 4, "sample_steps": 2,
                  "fid_features": "efficientnet-lite0", "kid_subset_size": 4, "grid_images": 4, **train},
        "tracking": {"sweep": "t", "cell_key": "t2i/synthetic/tiny-sd/lora/frac=1/seed=0",
                     "trial_key": "t2i/synthetic/tiny-sd/lora/frac=1/seed=0/trial=0"},
    }


def run(config, session=None) -> LocalSession:
    return run_worker(train_loop_per_worker, config, session)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> LocalSession:
    return run(t2i_config(storage=tmp_path_factory.mktemp("t2i-uninterrupted")))


def test_reports_validation_loss_each_epoch_and_fid_kid_at_the_end(uninterrupted):
    reports = uninterrupted.reports
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert all(r["score"] == -r["val/best_loss"] for r in reports)
    assert reports[-1]["val/best_loss"] == min(r["val/loss"] for r in reports)
    assert reports[-1]["train/loss"] < reports[0]["train/loss"]
    assert all(not any(k.startswith("test/") for k in r) for r in reports[:-1])
    last = reports[-1]
    assert last["test/fid"] > 0 and np.isfinite(last["test/kid"]) and last["test/generated"] == 4


@pytest.mark.parametrize(("setting", "device", "enabled", "dtype", "scaler"), [
    ("bf16", "cuda", True, torch.bfloat16, False),
    ("fp16", "cuda", True, torch.float16, True),  # only fp16 needs a GradScaler
    ("no", "cuda", False, torch.float16, False),
    ("bf16", "cpu", False, torch.bfloat16, False),  # CPU runs are fp32 whatever the setting
])
def test_precision_follows_the_setting_and_the_device(setting, device, enabled, dtype, scaler):
    precision = Precision.of(setting, torch.device(device))
    assert (precision.enabled, precision.dtype, precision.scales_loss) == (enabled, dtype, scaler)


def test_resume_reloads_the_trained_weights_and_continues_the_same_curve(uninterrupted, tmp_path):
    first = run(t2i_config(storage=tmp_path), StoppingSession(stop_after_reports=1))
    assert len(first.reports) == 1
    # Fixed validation timesteps and noise: a rerun reports the same loss (what lets ASHA compare trials).
    assert first.reports[0]["val/loss"] == uninterrupted.reports[0]["val/loss"]
    assert list((tmp_path / "checkpoints").glob("*/epoch_000001/trained.safetensors"))
    resumed = run(t2i_config(storage=tmp_path))
    # The checkpointed epoch is reported again first (the driver may not have heard it), as first reported.
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]
    assert resumed.reports[0] == first.reports[0]
    for ours, theirs in zip(resumed.reports[1:], uninterrupted.reports[1:], strict=True):
        for key in ("train/loss", "val/loss", "val/best_loss", "test/fid", "test/kid"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


def test_gradient_checkpointing_changes_memory_not_results(uninterrupted):
    checkpointed = run(t2i_config(gradient_checkpointing=True), StoppingSession(stop_after_reports=1))
    for key in ("train/loss", "val/loss"):
        assert checkpointed.reports[0][key] == pytest.approx(uninterrupted.reports[0][key], rel=1e-5), key


def test_a_resume_without_the_trained_weights_would_be_caught(uninterrupted, tmp_path):
    """The failure diffusers' scripts had: optimizer restored, weights not. The curve then differs, which is what
    the resume test above would see."""
    run(t2i_config(storage=tmp_path), StoppingSession(stop_after_reports=1))
    for trained in (tmp_path / "checkpoints").glob("*/epoch_000001/trained.safetensors"):
        from safetensors.torch import load_file, save_file

        save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in load_file(str(trained)).items()},
                  str(trained))
    resumed = run(t2i_config(storage=tmp_path))
    assert resumed.reports[0]["val/loss"] != pytest.approx(uninterrupted.reports[1]["val/loss"], abs=1e-6)


# --- bad input, before any work -------------------------------------------------------------------------------

T2I = ["--config", "search_spaces/quickstart_t2i.yaml", "--set", "methods=[lora]", "--set", "image_size=32"]


def bad(capsys, tmp_path: Path, *args: str) -> str:
    storage = tmp_path / "store"
    code = main(["--storage", str(storage), *T2I, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not storage.exists(), "bad input must not create the storage"
    return err


def captioned_csv(root: Path, captions: list[str] | None) -> Path:
    from tests.dataset_layouts import write_image

    rows = []
    for i in range(12):
        write_image(root / f"img{i}.png", i, size=(16, 16))
        rows.append({"path": f"img{i}.png", "label": i % 2, **({"caption": captions[i]} if captions else {})})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_dataset_without_captions(capsys, tmp_path):
    root = captioned_csv(tmp_path / "data", None)
    err = bad(capsys, tmp_path, "--set", f"datasets=[{{name: csv, id: nocap, root: {root}}}]")
    assert "'nocap' has no captions" in err and "caption_column" in err


def test_images_without_a_caption_are_counted(capsys, tmp_path):
    root = captioned_csv(tmp_path / "data", ["a chest x-ray"] * 9 + ["", " ", ""])
    err = bad(capsys, tmp_path, "--set", f"datasets=[{{name: csv, id: gaps, root: {root}}}]")
    assert "3 of 12 images have no caption" in err and "img" in err


def test_unknown_text_encoder_path(capsys, tmp_path):
    err = bad(capsys, tmp_path, "--set", f"backbones=[{{name: tiny-sd, weights: random, kwargs: "
                                         f"{{text_encoder: {tmp_path / 'no-encoder'}}}}}]")
    assert "no-encoder" in err and "text_encoder" in err and "config.json" in err


def test_stable_diffusion_not_available_offline(capsys, tmp_path):
    err = bad(capsys, tmp_path, "--set", "backbones=[{name: stable-diffusion-v1-5}]")
    assert "not in the Hugging Face cache" in err and "local diffusers folder" in err


# --- a tiny sweep, end to end ---------------------------------------------------------------------------------

def test_tiny_t2i_sweep_end_to_end_with_mlflow(tmp_path):
    """Two U-Net methods side by side (the quickstart's ASHA and search, at one trial per cell to keep the suite
    short): FID/KID and a sample grid land in MLflow for every trial."""
    import mlflow

    data = ["--data-root", str(SHARED_DATA)] if NIH.is_dir() else ["--set", "datasets=[{name: synthetic}]"]
    result = launch("--config", "search_spaces/quickstart_t2i.yaml", "--storage", str(tmp_path), *data,
                    "--set", "methods=[lora, difffit]", "--set", "image_size=32", "--set", "fractions=[0.25]",
                    "--set", "train.epochs=2", "--set", "train.eval_prompts=8", "--set", "train.sample_steps=4",
                    "--set", "train.fid_real_images=32", "--set", "train.kid_subset_size=8",
                    "--set", "search.trials_per_cell=1")
    assert "2/2 cells complete" in result.stdout and "test fid" in result.stdout

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quickstart-t2i").experiment_id])
    trials = [r for r in runs if "trial_key" in r.data.tags and r.data.tags.get("status") == "finished"]
    assert trials, [r.data.tags for r in runs]
    for run_ in trials:
        assert {"test/fid", "test/kid", "val/best_loss"} <= set(run_.data.metrics)
        assert run_.data.params["selection.test"] == "test/fid"
        assert "efficientnet-lite0" in run_.data.tags["fid.features"]
        assert {a.path for a in client.list_artifacts(run_.info.run_id, "samples")} == {
            "samples/samples.png", "samples/prompts.txt"}
    assert sorted(r.data.tags["method"] for r in trials) == ["difffit", "lora"]
