"""DiffFit: biases, norm layers and a learned scale factor per block. Xie et al. ICCV 2023, arXiv:2304.06648.

DiffFit scales the output of each attention and feed-forward branch of a diffusion transformer by a learned
gamma (initialised to 1). In the U-Net the same branches are every transformer block's self-attention,
cross-attention and feed-forward, and every residual block's last convolution (the end of its residual branch).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.unet_parts import train_biases, train_norms


def _scale_output(module: nn.Module, args: tuple, output):
    return output * module.difffit_gamma


def scaled_branches(unet: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    branches = []
    for module in unet.modules():
        if isinstance(module, BasicTransformerBlock):
            branches += [b for b in (module.attn1, module.attn2, module.ff) if b is not None]
        elif isinstance(module, ResnetBlock2D):
            branches.append(module.conv2)
    return branches


@register_method("difffit", families=("unet",), reference="Xie et al. ICCV 2023, DiffFit, arXiv:2304.06648",
                 knob_docs={"gamma_init": "initial value of the per-branch scale factors"})
def difffit(model: nn.Module, info: BackboneInfo, gamma_init: float = 1.0) -> nn.Module:
    """Biases, norm layers, and a learned scale factor on every attention, feed-forward and residual branch."""
    train_biases(model)
    train_norms(model)
    for branch in scaled_branches(model):
        device = next(branch.parameters()).device
        branch.difffit_gamma = nn.Parameter(torch.full((1,), gamma_init, device=device))
        branch.register_forward_hook(_scale_output)
    return model
