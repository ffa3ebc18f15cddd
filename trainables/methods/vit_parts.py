"""What several ViT methods need from a timm VisionTransformer: its blocks, its width, and a way to add a branch
beside a block's attention or MLP without copying timm's code."""

from __future__ import annotations

import types

import torch
from torch import nn


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ValueError(f"needs a timm VisionTransformer, got {type(model).__name__}")
    blocks = list(model.blocks)
    if not all(isinstance(b, Block) for b in blocks):
        raise ValueError("needs standard timm ViT blocks (Block with norm1/attn/norm2/mlp)")
    return blocks


def embed_dim(model: nn.Module) -> int:
    return int(model.embed_dim)


def add_branch(block: nn.Module, where: str, branch: nn.Module, reads: str) -> None:
    """Add `branch` in parallel to the block's `where` ("attn" or "mlp") sub-layer. It reads the sub-layer's
    normalised input (`reads="normed"`, Convpass) or the residual stream before the norm (`reads="residual"`,
    AdaptFormer), and its output joins the residual sum."""
    assert where in ("attn", "mlp") and reads in ("normed", "residual")
    branch.peft_reads = reads
    setattr(block, f"peft_{where}_branch", branch)
    if not getattr(block, "_peft_forward", False):
        block.forward = types.MethodType(_forward_with_branches, block)
        block._peft_forward = True


def _branch(block: nn.Module, where: str, residual: torch.Tensor, normed: torch.Tensor) -> torch.Tensor | float:
    branch = getattr(block, f"peft_{where}_branch", None)
    if branch is None:
        return 0.0
    return branch(normed if branch.peft_reads == "normed" else residual)


def _forward_with_branches(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    # timm's Block.forward, plus the parallel branches.
    h = self.norm1(x)
    x = x + self.drop_path1(self.ls1(self.attn(h, attn_mask=attn_mask, is_causal=is_causal))) + _branch(self, "attn", x, h)
    h = self.norm2(x)
    return x + self.drop_path2(self.ls2(self.mlp(h))) + _branch(self, "mlp", x, h)
