"""DiffFit: biases, norm layers and learned per-channel scale factors. Xie et al. ICCV 2023, arXiv:2304.06648;
for the Stable Diffusion U-Net as in mkshing/DiffFit-pytorch (the implementation for SD that the study's count,
0.58M, matches).

Every transformer block scales the outputs of its self-attention, cross-attention and feed-forward branches by a
vector gamma (one entry per channel), and inside every attention the query, key, value and output projections get
one each; all start at 1, so the U-Net starts as the pretrained one. Trained with them: every bias and every norm
layer (the reference trains every parameter whose name holds `bias`, `norm` or `gamma`). SD v1.5: 443,844 biases
and norm parameters + 11 x 12,480 gammas (16 transformer blocks of 320-1,280 channels) = 581,124.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_biases, train_norms


def _scale_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * module.difffit_gamma


def scaled_outputs(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, channels) whose output DiffFit scales: per transformer block attn1, attn2 and ff, and per
    attention its to_q, to_k, to_v and to_out.0."""
    from diffusers.models.attention import BasicTransformerBlock

    found = []
    for block in unet.modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        attentions = [a for a in (block.attn1, block.attn2) if a is not None]
        channels = block.norm1.normalized_shape[0]
        found += [(branch, channels) for branch in (*attentions, block.ff)]
        for attn in attentions:
            found += [(layer, layer.out_features) for layer in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])]
    return found


@register_method("difffit", families=("unet",), reference="Xie et al. ICCV 2023, DiffFit, arXiv:2304.06648 "
                 "(for SD: mkshing/DiffFit-pytorch)",
                 knob_docs={"gamma_init": "initial value of the scale factors"})
def difffit(model: nn.Module, info: BackboneInfo, gamma_init: float = 1.0) -> nn.Module:
    """Biases, norm layers, and per-channel scales of every attention, projection and feed-forward output."""
    targets = scaled_outputs(model)
    if not targets:
        raise ValueError("the U-Net has no transformer blocks to scale")
    train_biases(model)
    train_norms(model)
    for module, channels in targets:
        device = next(module.parameters()).device
        module.difffit_gamma = nn.Parameter(torch.full((channels,), gamma_init, device=device))
        module.register_forward_hook(_scale_output)
    return model
