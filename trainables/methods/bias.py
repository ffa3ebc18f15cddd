from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.unet_parts import train_biases


@register_method("bias", families=("unet",), reference="bias tuning (BitFit, Ben Zaken et al. 2022, arXiv:2106.10199)")
def bias(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every bias of the U-Net trains."""
    train_biases(model)
    return model
