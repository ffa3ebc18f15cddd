from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


@register_method("batchnorm", families=("cnn",), reference="BatchNorm tuning (affine + statistics), e.g. Frankle et al. 2021, arXiv:2003.00152",
                 bn_mode="train")
def batchnorm(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every BatchNorm's scale and shift trains, and its running statistics adapt to the new data."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.requires_grad_(True)
    return model
