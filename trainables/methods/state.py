"""What a method trained, as a state dict: saved, loaded and counted the same way for every method."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BnMode = Literal["train", "eval"]
# A method may give some of its parameters their own learning rate, as a factor of the trial's (SVDiff's 1-D
# parameters): it sets this attribute on them and the optimizer puts them in a group of their own.
LR_SCALE = "medpeft_lr_scale"


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


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups: trained parameters at the trial's learning rate, except those a method
    gave a learning-rate factor."""
    groups: dict[float, list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(getattr(param, LR_SCALE, 1.0), []).append(param)
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay} for scale, params in groups.items()]
