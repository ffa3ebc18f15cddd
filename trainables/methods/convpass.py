from __future__ import annotations

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import add_branch, embed_dim, vit_blocks


class ConvBypass(nn.Module):
    """1x1 down -> 3x3 conv over the patch grid (prefix tokens as 1x1 maps) -> 1x1 up, with QuickGELU, times s."""

    def __init__(self, dim: int, hidden: int, scale: float, prefix: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.scale, self.prefix, self.grid = scale, prefix, grid
        self.dropout = nn.Dropout(0.1)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.conv.weight)  # Convpass' init: the conv starts as the identity
        with torch.no_grad():
            self.conv.weight[:, :, 1, 1] += torch.eye(hidden)
        nn.init.zeros_(self.conv.bias)

    @staticmethod
    def act(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.act(self.down(x))
        prefix, patches = h[:, : self.prefix], h[:, self.prefix :]
        grid_h, grid_w = self.grid
        patches = self.conv(patches.transpose(1, 2).reshape(b, -1, grid_h, grid_w)).flatten(2).transpose(1, 2)
        # Class/register tokens go through the same conv as 1x1 maps (only its centre tap touches them).
        prefix = self.conv(prefix.reshape(-1, prefix.shape[-1], 1, 1)).reshape(b, self.prefix, -1)
        return self.up(self.dropout(self.act(torch.cat([prefix, patches], dim=1)))) * self.scale


@register_method(
    "convpass",
    families=("vit",),
    reference="Jie & Deng 2022, Convpass, arXiv:2207.07039",
    knob_docs={"hidden": "channels of the bypass", "scale": "fixed factor on the bypass output"},
)
def convpass(model: nn.Module, info: BackboneInfo, hidden: int = 8, scale: float = 1.0) -> nn.Module:
    """A convolutional bypass beside every block's attention and MLP."""
    grid = tuple(model.patch_embed.grid_size)
    for block in vit_blocks(model):
        for where in ("attn", "mlp"):
            branch = ConvBypass(embed_dim(model), hidden, scale, model.num_prefix_tokens, grid)
            add_branch(block, where, branch, reads="normed")
    return model
