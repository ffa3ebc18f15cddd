"""Does a method fit a backbone, and how many parameters does it train? Answered without weights or memory by
applying the method to the backbone built on PyTorch's meta device. A method whose setup reads tensor values
(peft's BOFT builds permutation matrices) cannot run there; it is applied to a real, randomly initialised copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainables.backbones import build_backbone
from trainables.methods import PreparedModel, prepare_model


def probe(backbone: str, method: str, knobs: dict[str, Any] | None = None, bn_mode: str | None = None,
          image_size: int = 224, num_classes: int = 2, weights: str = "random", **backbone_kwargs: Any) -> PreparedModel:
    """The method applied to the backbone (raises MethodError when it does not fit). No weights are read:
    `weights` is accepted for a uniform interface and ignored."""
    return apply_without_weights(
        lambda device: build_backbone(backbone, num_classes, "random", image_size, device=device, **backbone_kwargs),
        method, knobs, bn_mode)


def apply_without_weights(build: Callable[[str], tuple[nn.Module, Any]], method: str, knobs: dict[str, Any] | None,
                          bn_mode: str | None) -> PreparedModel:
    """`build(device)` -> (model, info) with random weights; the method applied on the meta device, or on the CPU
    when its setup reads tensor values."""
    for device in ("meta", "cpu"):
        model, info = build(device)
        try:
            with torch.device(device):
                return prepare_model(model, info, method, knobs, bn_mode)
        except RuntimeError as e:
            if device == "cpu" or "meta" not in str(e):
                raise
    raise AssertionError("unreachable")
