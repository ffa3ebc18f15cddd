from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method


@register_method("layernorm", families=("vit",), reference="Basu et al. 2023, LayerNorm tuning, arXiv:2304.01917")
def layernorm(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """Every LayerNorm's scale and shift trains."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    return model
