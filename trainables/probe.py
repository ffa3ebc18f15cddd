"""Does a method fit a backbone, and how many parameters does it train? Answered without weights or memory by
applying the method to the backbone built on PyTorch's meta device. A method whose setup reads tensor values
(peft's BOFT builds permutation matrices) cannot run there; it is applied to a real, randomly initialised copy."""

from __future__ import annotations

import copy
from collections import OrderedDict
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

    def build(device: str) -> tuple[nn.Module, Any]:
        if device != "meta":
            return build_backbone(backbone, num_classes, "random", image_size, device=device, **backbone_kwargs)
        key = (backbone, num_classes, image_size, repr(sorted(backbone_kwargs.items())))
        if key not in _ON_META:
            _ON_META[key] = build_backbone(backbone, num_classes, "random", image_size, device="meta",
                                           **backbone_kwargs)
            while len(_ON_META) > _ON_META_KEPT:
                _ON_META.popitem(last=False)
        _ON_META.move_to_end(key)
        model, info = _ON_META[key]
        return copy.deepcopy(model), info

    return apply_without_weights(build, method, knobs, bn_mode)


# A plan probes every method of a backbone for each class count of its datasets: building the backbone is most of
# a probe's time, and a copy of the one built on meta (no tensors to copy) costs a fraction of it.
_ON_META: OrderedDict[tuple, tuple[nn.Module, Any]] = OrderedDict()
_ON_META_KEPT = 4


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
