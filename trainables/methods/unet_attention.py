from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_attention


@register_method("attention", families=("unet",),
                 reference="Touvron et al. ECCV 2022, attention tuning, arXiv:2203.09795 (U-Net transformer blocks)")
def unet_attention(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every parameter inside the U-Net's transformer blocks (attention, feed-forward, their norms and
    projections)."""
    train_attention(model)
    return model
