from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


@register_method("full", families=("vit", "cnn", "unet"), reference="baseline: full fine-tuning", bn_mode="train")
def full(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every parameter of the backbone (or U-Net) trains: the baseline PEFT is measured against."""
    return model.requires_grad_(True)
