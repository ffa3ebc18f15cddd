"""What a method trained, as a state dict: saved, loaded and counted the same way for every method."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BnMode = Literal["train", "eval"]


def train_mode(model: nn.Module, bn_mode: BnMode) -> nn.Module:
    """`model.train()`, except that BatchNorm keeps its pretrained statistics when bn_mode is "eval"."""
    model.train()
    if bn_mode == "eval":
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
    return model


def trainable_state_dict(model: nn.Module, bn_mode: BnMode) -> dict[str, torch.Tensor]:
    """The trained parameters, plus BatchNorm running statistics when they were updated (bn_mode "train")."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if bn_mode == "train":
        for prefix, module in model.named_modules():
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None:
                        state[f"{prefix}.{name}" if prefix else name] = buffer.detach()
    return state


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `trainable_state_dict` saved; every saved tensor must find its place."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise KeyError(f"checkpoint holds tensors this model does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
