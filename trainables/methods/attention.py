from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import vit_blocks


@register_method("attention", families=("vit",), reference="Touvron et al. ECCV 2022, attention tuning, arXiv:2203.09795")
def attention(model: nn.Module, info: BackboneInfo) -> nn.Module:
    """The attention projections of every block train: fused qkv and the output projection (weights and biases)."""
    for block in vit_blocks(model):
        block.attn.qkv.requires_grad_(True)
        block.attn.proj.requires_grad_(True)
    return model
