from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


@register_method("bitfit", families=("vit", "cnn"), reference="Ben Zaken et al. 2022, BitFit, arXiv:2106.10199")
def bitfit(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every bias term trains (in CNNs whose convolutions have none, the BatchNorm shifts are the biases)."""
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)
    return model
