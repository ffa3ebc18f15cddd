"""The parameter selectors methods are unions of: every bias (what `bitfit` and `bias` train in every family:
ViTs, CNNs and U-Nets), every norm layer, and the transformer (attention) blocks of a diffusers
UNet2DConditionModel. Each selector makes its parameters trainable."""

from __future__ import annotations

from torch import nn

# The projections of every diffusers Attention: what LoRA (ours and peft:<tuner>) adapts in a U-Net.
ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]


def train_biases(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)


def train_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.GroupNorm | nn.LayerNorm):
            module.requires_grad_(True)


def transformer_blocks(unet: nn.Module) -> list[nn.Module]:
    """The U-Net's Transformer2DModel blocks (self- and cross-attention, feed-forward, their norms and
    projections)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    blocks = [m for m in unet.modules() if isinstance(m, Transformer2DModel)]
    if not blocks:
        raise ValueError("the U-Net has no transformer (attention) blocks")
    return blocks


def train_attention(unet: nn.Module) -> None:
    for block in transformer_blocks(unet):
        block.requires_grad_(True)
