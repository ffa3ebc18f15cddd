"""What several CNN methods need from a timm CNN: its residual blocks, recognised by their class names (timm's
ResNet, EfficientNet/MobileNet and ConvNeXt families)."""

from __future__ import annotations

from torch import nn

# timm's residual-block classes. ConvBnAct is what timm's EfficientNet builds for the `cn` blocks of an arch_def
# (EfficientNetV2's first stages); EfficientNet-Lite0 and ResNets have none.
BLOCK_TYPES = ("BasicBlock", "Bottleneck", "DepthwiseSeparableConv", "InvertedResidual", "EdgeResidual",
               "ConvBnAct", "ConvNeXtBlock")


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = [m for m in model.modules() if type(m).__name__ in BLOCK_TYPES]
    if not blocks:
        raise ValueError(f"no residual blocks of a known type ({', '.join(BLOCK_TYPES)})")
    return blocks
