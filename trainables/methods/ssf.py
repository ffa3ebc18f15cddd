"""SSF: a learned per-channel scale and shift after every operation, foldable into that operation afterwards.
Lian et al. NeurIPS 2022, arXiv:2210.08823."""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


class SSF(nn.Module):
    def __init__(self, base: nn.Module, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.base, self.channel_dim = base, channel_dim
        device = next(base.parameters()).device
        self.ssf_scale = nn.Parameter(torch.empty(channels, device=device).normal_(1.0, 0.02))
        self.ssf_shift = nn.Parameter(torch.empty(channels, device=device).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        shape = [1] * y.ndim
        shape[self.channel_dim] = -1
        return y * self.ssf_scale.view(shape) + self.ssf_shift.view(shape)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base operation with the scale and shift folded in (same outputs, no extra parameters)."""
        base, scale, shift = self.base, self.ssf_scale, self.ssf_shift
        base.weight.mul_(scale.view(-1, *[1] * (base.weight.ndim - 1)))
        bias = base.bias * scale + shift if base.bias is not None else shift.clone()
        base.bias = nn.Parameter(bias, requires_grad=False)
        return base


def _targets(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module, int, int]]:
    """(name, module, channels, channel dim) of every operation SSF follows: linear and conv layers, and the
    norms whose affine output it can fold into (timm's BatchNormAct, with an activation inside, is skipped: the
    convolution before it carries the SSF)."""
    found = []
    for name, module in model.named_modules():
        if head and (name == head or name.startswith(head + ".")):
            continue
        if isinstance(module, nn.Linear):
            found.append((name, module, module.out_features, -1))
        elif isinstance(module, nn.Conv2d):
            found.append((name, module, module.out_channels, 1))
        elif type(module) is nn.LayerNorm and module.elementwise_affine:
            found.append((name, module, module.normalized_shape[-1], -1))
        elif type(module) is nn.BatchNorm2d and module.affine:
            found.append((name, module, module.num_features, 1))
    return found


def merge_ssf(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, SSF):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.merged())
    return model


@register_method("ssf", families=("vit", "cnn"), reference="Lian et al. NeurIPS 2022, SSF, arXiv:2210.08823",
                 merge=merge_ssf)
def ssf(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """A per-channel scale and shift after every linear, conv and norm layer; merged into them for inference."""
    for name, module, channels, channel_dim in _targets(model, info.head):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SSF(module, channels, channel_dim))
    return model
