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


def _add_adapter_output(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + block.conv_adapter(args[0])


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in BLOCK_TYPES]


def block_shapes(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> dict[str, tuple[int, int, int]]:
    """(in channels, out channels, stride) of each block, read off one small forward pass."""
    shapes, handles = {}, []
    for name, block in blocks:
        def record(module, args, output, name=name):
            shapes[name] = (args[0].shape[1], output.shape[1], args[0].shape[-1] // output.shape[-1])
        handles.append(block.register_forward_hook(record))
    device = next(model.parameters()).device
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64, device=device))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return shapes


@register_method(
    "conv_adapter",
    families=("cnn",),
    reference="Chen et al. 2022, Conv-Adapter, arXiv:2208.07463 (parallel to each residual block)",
    knob_docs={"reduction": "channel reduction of the adapter's hidden width", "kernel": "down conv kernel"},
)
def conv_adapter(model: nn.Module, info: BackboneInfo, reduction: int = 4, kernel: int = 3) -> nn.Module:
    """A small convolutional adapter beside every residual block, its output added to the block's."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(f"no residual blocks of a known type ({', '.join(BLOCK_TYPES)})")
    shapes = block_shapes(model, blocks)
    device = next(model.parameters()).device
    for name, block in blocks:
        c_in, c_out, stride = shapes[name]
        block.conv_adapter = ConvAdapter(c_in, c_out, stride, reduction, kernel).to(device)
        block.register_forward_hook(_add_adapter_output)
    return model
