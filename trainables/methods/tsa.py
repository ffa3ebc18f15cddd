"""TSA, task-specific adapters: a learned 1x1 convolution in parallel with every convolution of the residual blocks,
y = conv(x) + alpha * x (alpha: out x in, with the convolution's stride). Li, Liu & Bilen, CVPR 2022,
arXiv:2107.00358; reference code VICO-UoE/URL (`conv_tsa`, residual adapters in matrix form), as in the study's
Listing 4 (Dutt et al. 2024: every Conv2d that is a direct child of a block of ResNet layer1-layer4).

ResNet-50: 10,616,832 adapter parameters (plus the head; printed 10.6M). The pre-classifier alignment of the
reference (`beta`, for few-shot prototypes) is not part of the study's method and not added.

A 1x1 kernel applied with the convolution's stride reads the input pixel under the centre tap of a k x k kernel
whose padding is centred (ResNet's 3x3 with padding 1), so the adapter is the centre tap of a kernel added to the
convolution's own: y = conv(x, W + centre(alpha)). That is how it runs here: one convolution instead of two, with
the convolution's own padding (so also timm's TensorFlow-style "same" padding, where a separate strided 1x1 would
be one pixel off), and merged exactly by adding centre(alpha) to W. Grouped convolutions (EfficientNet's
depthwise ones) get alpha per group (out x in/groups: per channel for a depthwise convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables.backbones import BackboneInfo
from trainables.methods.cnn_parts import residual_blocks
from trainables.methods.registry import register_method


class TSAConv(nn.Module):
    """A frozen Conv2d plus its task-specific adapter alpha (out, in/groups, 1, 1)."""

    def __init__(self, base: nn.Conv2d, init_scale: float) -> None:
        super().__init__()
        kernel = base.kernel_size
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"TSA needs odd kernels (a centre tap), got a {kernel[0]}x{kernel[1]} convolution")
        self.base = base
        out_channels, in_per_group = base.weight.shape[:2]
        per_group = out_channels // base.groups
        # The reference's initialisation: identity (per group) scaled by 1e-4, so the adapted network starts as
        # the pretrained one to within 1e-4 of each adapted convolution's input.
        eye = torch.eye(per_group, in_per_group, device=base.weight.device).repeat(base.groups, 1)
        self.alpha = nn.Parameter((eye * init_scale)[:, :, None, None])

    def centred_alpha(self) -> torch.Tensor:
        kh, kw = self.base.kernel_size
        return F.pad(self.alpha, (kw // 2, kw // 2, kh // 2, kh // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight + self.centred_alpha().to(self.base.weight.dtype)
        return functional_call(self.base, {"weight": weight}, (x,))

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        self.base.weight += self.centred_alpha().to(self.base.weight.dtype)
        return self.base


def tsa_convs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """(block, attribute, conv) for every Conv2d that is a direct child of a residual block (ResNet: conv1, conv2
    and conv3 of every bottleneck; the stem and the downsample projections are not direct children)."""
    return [(block, name, child) for block in residual_blocks(model) for name, child in block.named_children()
            if isinstance(child, nn.Conv2d)]


def merge_tsa(model: nn.Module) -> nn.Module:
    for block in residual_blocks(model):
        for name, child in list(block.named_children()):
            if isinstance(child, TSAConv):
                setattr(block, name, child.merged())
    return model


@register_method(
    "tsa",
    families=("cnn",),
    reference="Li, Liu & Bilen, CVPR 2022, TSA, arXiv:2107.00358 (VICO-UoE/URL conv_tsa, residual, matrix form)",
    merge=merge_tsa,
    knob_docs={"init_scale": "alpha starts as this times the identity (the reference: 1e-4; 0: exactly the "
                             "pretrained function)"},
)
def tsa(model: nn.Module, info: BackboneInfo, init_scale: float = 1e-4) -> nn.Module:
    """A parallel 1x1 adapter beside every convolution of the residual blocks (matrix form, the conv's stride)."""
    convs = tsa_convs(model)
    if not convs:
        raise ValueError("no convolutions directly inside the residual blocks")
    for block, name, conv in convs:
        setattr(block, name, TSAConv(conv, init_scale))
    return model
