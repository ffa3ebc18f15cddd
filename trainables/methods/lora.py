from __future__ import annotations

import math

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import vit_blocks


class QVLoRA(nn.Module):
    """timm's fused qkv Linear plus low-rank updates of its q and v thirds (k untouched), as in the LoRA paper."""

    def __init__(self, qkv: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scaling, self.width = qkv, alpha / r, qkv.out_features // 3
        self.dropout = nn.Dropout(dropout)
        for name in ("q", "v"):
            a = nn.Parameter(torch.empty(r, qkv.in_features, device=qkv.weight.device))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            setattr(self, f"lora_{name}_A", a)
            setattr(self, f"lora_{name}_B", nn.Parameter(torch.zeros(self.width, r, device=qkv.weight.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x)
        dq = h @ self.lora_q_A.t() @ self.lora_q_B.t()
        dv = h @ self.lora_v_A.t() @ self.lora_v_B.t()
        return self.base(x) + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        w = self.width
        self.base.weight[:w] += self.scaling * self.lora_q_B @ self.lora_q_A
        self.base.weight[2 * w :] += self.scaling * self.lora_v_B @ self.lora_v_A
        return self.base


def merge_qv_lora(model: nn.Module) -> nn.Module:
    for block in vit_blocks(model):
        if isinstance(block.attn.qkv, QVLoRA):
            block.attn.qkv = block.attn.qkv.merged()
    return model


@register_method(
    "lora",
    families=("vit",),
    reference="Hu et al. 2021, LoRA, arXiv:2106.09685 (q and v only, as the study's author)",
    merge=merge_qv_lora,
    knob_docs={"r": "rank", "alpha": "update scaled by alpha / r", "dropout": "on the adapter input"},
)
def lora(model: nn.Module, info: BackboneInfo, r: int = 8, alpha: float = 8, dropout: float = 0.0) -> nn.Module:
    """Low-rank updates of the query and value projections, split out of timm's fused qkv."""
    for block in vit_blocks(model):
        block.attn.qkv = QVLoRA(block.attn.qkv, r, alpha, dropout)
    return model
