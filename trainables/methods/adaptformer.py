from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import add_branch, embed_dim, vit_blocks


class AdaptMLP(nn.Module):
    """down -> ReLU -> dropout -> up, times a fixed scale; starts as the zero function (up is zero-initialised, the
    reference's "lora" init)."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down, self.up, self.scale = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim), scale
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


@register_method(
    "adaptformer",
    families=("vit",),
    reference="Chen et al. NeurIPS 2022, AdaptFormer, arXiv:2205.13535",
    knob_docs={"bottleneck": "hidden width of the adapter (AdaptFormer's ViT-B default 64; the study's counts, "
                             "0.1M / 0.3M / 0.5M on ViT-B/L/H, give 6)",
               "scale": "fixed factor on the adapter's output", "dropout": "after the ReLU (the reference: 0.1)"},
)
def adaptformer(model: nn.Module, info: BackboneInfo, bottleneck: int = 64, scale: float = 0.1,
                dropout: float = 0.1) -> nn.Module:
    """A bottleneck adapter beside every block's MLP, reading the residual stream before the MLP's norm (as
    AdaptFormer's code does; ShoufaChen/AdaptFormer, image models: bottleneck 64, scale 0.1, dropout 0.1)."""
    for block in vit_blocks(model):
        add_branch(block, "mlp", AdaptMLP(embed_dim(model), bottleneck, scale, dropout), reads="residual")
    return model
