from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


@register_method("linear", families=("vit", "cnn"), reference="baseline: linear probing")
def linear(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Only the new classifier head trains; the backbone is a frozen feature extractor."""
    return model
