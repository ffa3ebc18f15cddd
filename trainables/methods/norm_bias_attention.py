from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_attention, train_biases, train_norms


@register_method("norm_bias_attention", families=("unet",),
                 reference="norm + bias + attention tuning, as in Dutt et al. 2024")
def norm_bias_attention(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Norm layers, every bias, and everything inside the transformer (attention) blocks."""
    train_norms(model)
    train_biases(model)
    train_attention(model)
    return model
