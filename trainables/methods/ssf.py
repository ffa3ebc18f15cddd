"""SSF: a learned per-channel scale and shift after operations, foldable into them afterwards.
Lian et al. NeurIPS 2022, arXiv:2210.08823.

Where the scale and shift go depends on the backbone family, as in the study (Dutt et al. 2024, Table 2 and 6):
- ViT (SSF's own recipe): after every Linear, the patch-embedding convolution and every LayerNorm (timm's
  LayerNorm is a subclass of torch's, so the check is `isinstance`). ViT-B/L/H with a 3-class head: 208,131 /
  547,843 / 910,083 trainable, printed 0.2M / 0.5M / 0.9M.
- CNN: after every BatchNorm (one scale and shift per BatchNorm channel, before the activation where timm fuses
  one into the norm, as in `BatchNormAct2d`), so SSF is the same method on every CNN. ResNet-50: 59,267 with a
  3-class head; the study prints 60.6K, which no placement over ResNet-50's layers reproduces
  (docs/parameter_counts.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


class ScaleShift(nn.Module):
    """y = x * scale + shift, per channel (`channel_dim`), initialised near the identity as SSF's code does."""

    def __init__(self, channels: int, channel_dim: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.ssf_scale = nn.Parameter(torch.empty(channels, device=device).normal_(1.0, 0.02))
        self.ssf_shift = nn.Parameter(torch.empty(channels, device=device).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return x * self.ssf_scale.view(shape) + self.ssf_shift.view(shape)

    @torch.no_grad()
    def fold_into(self, base: nn.Module) -> None:
        """Make `base` (whose output this follows; weight with output channels first) produce the scaled and
        shifted output itself."""
        base.weight.mul_(self.ssf_scale.view(-1, *[1] * (base.weight.ndim - 1)))
        bias = base.bias * self.ssf_scale + self.ssf_shift if base.bias is not None else self.ssf_shift.clone()
        base.bias = nn.Parameter(bias, requires_grad=False)


class SSF(nn.Module):
    """An operation followed by its scale and shift."""

    def __init__(self, base: nn.Module, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.base = base
        self.ssf = ScaleShift(channels, channel_dim, next(base.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssf(self.base(x))

    def merged(self) -> nn.Module:
        """The base operation with the scale and shift folded in (same outputs, no extra parameters)."""
        self.ssf.fold_into(self.base)
        return self.base


def _vit_targets(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module, int, int]]:
    found = []
    for name, module in model.named_modules():
        if head and (name == head or name.startswith(head + ".")):
            continue
        if isinstance(module, nn.Linear):
            found.append((name, module, module.out_features, -1))
        elif isinstance(module, nn.Conv2d):
            found.append((name, module, module.out_channels, 1))
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            found.append((name, module, module.normalized_shape[-1], -1))
    return found


def _fused_activation(norm: nn.Module) -> bool:
    """timm's BatchNormAct2d: normalise, then `drop`, then `act`, in one module. The scale and shift take the
    place of its (identity) `drop`, so they act on the normalised values before the activation."""
    return isinstance(getattr(norm, "drop", None), nn.Identity) and hasattr(norm, "act")


def merge_ssf(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, SSF):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.merged())
        elif isinstance(module, _BatchNorm) and isinstance(getattr(module, "drop", None), ScaleShift):
            module.drop.fold_into(module)
            module.drop = nn.Identity()
    return model


@register_method("ssf", families=("vit", "cnn"), reference="Lian et al. NeurIPS 2022, SSF, arXiv:2210.08823",
                 merge=merge_ssf)
def ssf(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """A per-channel scale and shift after every linear layer, the patch embedding and every LayerNorm (ViT), or
    after every BatchNorm (CNN); folded into them for inference."""
    if info.family == "vit":
        targets = _vit_targets(model, info.head)
    else:
        targets = [(n, m, m.num_features, 1) for n, m in model.named_modules()
                   if isinstance(m, _BatchNorm) and m.affine and not (info.head and n.startswith(info.head))]
    if not targets:
        raise ValueError("no layer to put a scale and shift after (ViT: Linear/LayerNorm; CNN: BatchNorm)")
    for name, module, channels, channel_dim in targets:
        if info.family == "cnn" and _fused_activation(module):
            module.drop = ScaleShift(channels, channel_dim, module.weight.device)
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SSF(module, channels, channel_dim))
    return model
