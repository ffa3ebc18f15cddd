from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.peft_tools import inject, merge_peft
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import vit_blocks


@register_method(
    "lora_qkv",
    families=("vit",),
    reference="Hu et al. 2021, LoRA, arXiv:2106.09685 (via peft, on timm's fused qkv)",
    merge=merge_peft,
    knob_docs={"r": "rank", "alpha": "update scaled by alpha / r", "dropout": "on the adapter input"},
)
def lora_qkv(model: nn.Module, info: BackboneInfo, r: int = 8, alpha: float = 8, dropout: float = 0.0) -> nn.Module:
    """peft LoRA on the fused qkv projection: one low-rank update for q, k and v together."""
    import peft

    vit_blocks(model)
    return inject(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                         target_modules=r".*blocks\.\d+\.attn\.qkv"))
