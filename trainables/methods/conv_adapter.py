from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.cnn_parts import residual_blocks
from trainables.methods.registry import register_method


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
    return [c for b in residual_blocks(model) for c in b.modules() if isinstance(c, nn.Conv2d) and max(c.kernel_size) > 1]


@register_method(
    "conv_adapter",
    families=("cnn",),
    reference="Chen et al. 2022, Conv-Adapter, arXiv:2208.07463 (convolution-parallel)",
    knob_docs={"reduction": "channel reduction of the adapter's hidden width"},
)
def conv_adapter(model: nn.Module, info: BackboneInfo, reduction: int = 8) -> nn.Module:
    """A small convolutional adapter beside every spatial convolution of the residual blocks, with that
    convolution's kernel and stride; its output is added to the convolution's.

    Two choices differ from the reference code (Hhhhhhao/Conv-Adapter, reduction 8 as there), on purpose:
    - where the output joins: the reference adds it after the convolution's BatchNorm and ReLU (ResNet
      bottlenecks only; its BasicBlock path is broken). timm's blocks do not have one such place: a BasicBlock's
      second activation follows the residual sum, EfficientNet fuses norm and activation into one module,
      ConvNeXt has no activation there. Adding to the convolution's output works the same in every block, and
      the norm that follows rescales the sum as it rescales the convolution;
    - initialisation: the reference's kaiming init of both convolutions (scale 1) changes the network's output
      from the first step; the zero up-projection here starts every method from the pretrained function, as
      LoRA and the other adapters do, and the down-projection still gets gradients through it."""
    convs = adapted_convs(model)
    if not convs:
        raise ValueError("no k x k convolutions inside the residual blocks")
    for conv in convs:
        adapter = ConvAdapter(conv.in_channels, conv.out_channels, conv.stride[0], reduction, conv.kernel_size[0])
        conv.conv_adapter = adapter.to(conv.weight.device)
        conv.register_forward_hook(_add_adapter_output)
    return model
