from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_biases


@register_method("bias", families=("cnn", "unet"),
                 reference="bias tuning: TinyTL, Cai et al. NeurIPS 2020, arXiv:2007.11622 (CNN); BitFit, Ben Zaken "
                           "et al. 2022, arXiv:2106.10199 (U-Net); Dutt et al. 2024, Listings 2 and 6")
def bias(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every parameter named `bias` trains. In a CNN whose convolutions have none these are the BatchNorm shifts
    (ResNet-50: 26,560 plus the head, printed 32.7K); in the U-Net every bias (343,684, printed 0.34M)."""
    train_biases(model)
    return model
