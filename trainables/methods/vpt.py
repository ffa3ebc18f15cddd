"""Visual Prompt Tuning: learnable prompt tokens inserted after the class token, at the input (shallow) or
replaced before every block (deep). Jia et al. ECCV 2022, arXiv:2203.12119."""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import embed_dim, vit_blocks

REFERENCE = "Jia et al. ECCV 2022, VPT, arXiv:2203.12119"
KNOBS = {"tokens": "prompt tokens per layer", "dropout": "dropout on the prompts"}


class PromptedBlocks(nn.Sequential):
    """The ViT's blocks, with prompt tokens after the prefix (class/register) tokens. Being a Sequential of the
    same blocks keeps every pretrained parameter's name."""

    def __init__(self, blocks: nn.Sequential, prefix: int, tokens: int, dim: int, deep: bool, patch_area: int,
                 dropout: float) -> None:
        super().__init__(*blocks)
        self.prefix, self.tokens, self.deep = prefix, tokens, deep
        self.prompts = nn.Parameter(torch.empty(len(blocks) if deep else 1, tokens, dim))
        bound = math.sqrt(6.0 / (3 * patch_area + dim))  # VPT's initialisation
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = dropout  # a float, not an nn.Dropout: every child of this Sequential is run as a block
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, p = x.shape[0], self.prefix
        for i, block in enumerate(self):
            if i == 0 or self.deep:
                prompts = F.dropout(self.prompts[i if self.deep else 0], self.dropout, self.training)
                prompts = prompts.expand(batch, -1, -1)
                rest = x[:, p:] if i == 0 else x[:, p + self.tokens :]
                x = torch.cat([x[:, :p], prompts.to(x.dtype), rest], dim=1)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        # Drop the prompts again: the final norm and pooling see the sequence the backbone was built for.
        return torch.cat([x[:, :p], x[:, p + self.tokens :]], dim=1)


def _prompt(model: nn.Module, tokens: int, dropout: float, deep: bool) -> nn.Module:
    vit_blocks(model)
    if tokens < 1:
        raise ValueError("tokens must be >= 1")
    patch = model.patch_embed.patch_size
    model.blocks = PromptedBlocks(model.blocks, model.num_prefix_tokens, tokens, embed_dim(model), deep,
                                  patch[0] * patch[1], dropout)
    # timm's gradient checkpointing runs `checkpoint_seq(model.blocks, x)`, which calls the blocks one by one and
    # would skip the prompts silently. Checkpointing is done inside the prompted blocks instead.
    model.blocks.grad_checkpointing = bool(getattr(model, "grad_checkpointing", False))
    model.grad_checkpointing = False
    model.set_grad_checkpointing = types.MethodType(_set_grad_checkpointing, model)
    return model


def _set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    model.blocks.grad_checkpointing = enable


@register_method("vpt_shallow", families=("vit",), reference=REFERENCE, knob_docs=KNOBS)
def vpt_shallow(model: nn.Module, info: BackboneInfo, tokens: int = 10, dropout: float = 0.0) -> nn.Module:
    """Prompt tokens prepended to the patch tokens at the input of the first block."""
    return _prompt(model, tokens, dropout, deep=False)


@register_method("vpt_deep", families=("vit",), reference=REFERENCE, knob_docs=KNOBS)
def vpt_deep(model: nn.Module, info: BackboneInfo, tokens: int = 10, dropout: float = 0.0) -> nn.Module:
    """A separate set of prompt tokens at the input of every block."""
    return _prompt(model, tokens, dropout, deep=True)
