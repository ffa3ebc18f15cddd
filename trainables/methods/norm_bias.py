from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_biases, train_norms


@register_method("norm_bias", families=("unet",), reference="norm + bias tuning, as in Dutt et al. 2024")
def norm_bias(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Norm layers' scale and shift, and every bias."""
    train_norms(model)
    train_biases(model)
    return model
