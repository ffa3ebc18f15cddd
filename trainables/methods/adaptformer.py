from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import add_branch, embed_dim, vit_blocks


class AdaptMLP(nn.Module):
    """down -> ReLU -> up, times a fixed scale; starts as the zero function (up is zero-initialised)."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.down, self.up, self.scale = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim), scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x))) * self.scale


@register_method(
    "adaptformer",
    families=("vit",),
    reference="Chen et al. NeurIPS 2022, AdaptFormer, arXiv:2205.13535",
    knob_docs={"bottleneck": "hidden width of the adapter", "scale": "fixed factor on the adapter's output"},
)
def adaptformer(model: nn.Module, info: BackboneInfo, bottleneck: int = 64, scale: float = 0.1) -> nn.Module:
    """A bottleneck adapter beside every block's MLP, reading the residual stream (as AdaptFormer's code does)."""
    for block in vit_blocks(model):
        add_branch(block, "mlp", AdaptMLP(embed_dim(model), bottleneck, scale), reads="residual")
    return model
