from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_norms


@register_method("norm", families=("unet",), reference="norm tuning (GroupNorm/LayerNorm affine), as in Dutt et al. 2024")
def norm(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every norm layer's scale and shift trains (GroupNorm and LayerNorm)."""
    train_norms(model)
    return model
