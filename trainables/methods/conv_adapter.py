from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method

# Residual blocks of timm's CNN families (ResNet, EfficientNet/MobileNet, ConvNeXt).
BLOCK_TYPES = ("BasicBlock", "Bottleneck", "DepthwiseSeparableConv", "InvertedResidual", "EdgeResidual",
               "ConvNeXtBlock")


class ConvAdapter(nn.Module):
    """k x k grouped conv down (channels / reduction, the block's stride) -> ReLU -> 1x1 up, times a learned
    per-channel scale. Starts as the zero function (up is zero-initialised)."""

    def __init__(self, c_in: int, c_out: int, stride: int, reduction: int, kernel: int = 3) -> None:
        super().__init__()
        hidden = max(1, c_in // reduction)
        self.down = nn.Conv2d(c_in, hidden, kernel, stride=stride, padding=kernel // 2,
                              groups=math.gcd(c_in, hidden))
        self.up = nn.Conv2d(hidden, c_out, 1)
        self.alpha = nn.Parameter(torch.ones(c_out))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x))) * self.alpha.view(1, -1, 1, 1)


def _add_adapter_output(conv: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + conv.conv_adapter(args[0])


def adapted_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The spatial (k x k, k > 1) convolutions inside residual blocks: the stem and 1x1 projections are left alone."""
    blocks = [m for m in model.modules() if type(m).__name__ in BLOCK_TYPES]
    return [c for b in blocks for c in b.modules() if isinstance(c, nn.Conv2d) and max(c.kernel_size) > 1]


@register_method(
    "conv_adapter",
    families=("cnn",),
    reference="Chen et al. 2022, Conv-Adapter, arXiv:2208.07463 (convolution-parallel)",
    knob_docs={"reduction": "channel reduction of the adapter's hidden width"},
)
def conv_adapter(model: nn.Module, info: BackboneInfo, reduction: int = 4) -> nn.Module:
    """A small convolutional adapter beside every spatial convolution of the residual blocks, with that
    convolution's kernel and stride; its output is added to the convolution's."""
    convs = adapted_convs(model)
    if not convs:
        raise ValueError(f"no k x k convolutions inside residual blocks of a known type ({', '.join(BLOCK_TYPES)})")
    for conv in convs:
        adapter = ConvAdapter(conv.in_channels, conv.out_channels, conv.stride[0], reduction, conv.kernel_size[0])
        conv.conv_adapter = adapter.to(conv.weight.device)
        conv.register_forward_hook(_add_adapter_output)
    return model
