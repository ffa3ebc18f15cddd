from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import vit_blocks


@register_method(
    "attention",
    families=("vit",),
    reference="Touvron et al. ECCV 2022, attention tuning, arXiv:2203.09795; as in Dutt et al. 2024, Listing 3",
    knob_docs={"pos_embed": "also train the position embedding (the study's Listing 3 does; the patch embedding "
                            "stays frozen)"},
)
def attention(model: nn.Module, info: BackboneInfo, pos_embed: bool = True) -> nn.Module:
    """Every parameter of every block's attention (`.attn.` in its name: fused qkv, output projection, any q/k
    norms), and the position embedding."""
    vit_blocks(model)
    for name, param in model.named_parameters():
        if ".attn." in name:
            param.requires_grad_(True)
    if pos_embed and getattr(model, "pos_embed", None) is not None:
        model.pos_embed.requires_grad_(True)
    return model
