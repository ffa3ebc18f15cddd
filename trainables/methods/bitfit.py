from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.selectors import train_biases


@register_method("bitfit", families=("vit", "cnn"), reference="Ben Zaken et al. 2022, BitFit, arXiv:2106.10199")
def bitfit(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every bias term trains, the LayerNorm shifts included (BitFit's definition). ViT-B/L/H with a 3-class head:
    105,219 / 275,459 / 456,963; the study prints 0.1M / 0.2M / 0.4M, which these give truncated to the digit
    printed (as its ViT-L attention count, 100.97M, is printed 100M). The Linear layers' biases alone (85K /
    224K / 372K) match when rounded instead; nothing in the study says it left the norms' biases out. In CNNs
    whose convolutions have no bias, the BatchNorm shifts are the biases (the same as `bias`)."""
    train_biases(model)
    return model
