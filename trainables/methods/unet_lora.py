from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.peft_tools import inject, merge_peft
from trainables.methods.registry import register_method
from trainables.methods.unet_parts import ATTENTION_PROJECTIONS


@register_method(
    "lora",
    families=("unet",),
    reference="Hu et al. 2021, LoRA, arXiv:2106.09685 (U-Net attention projections, via peft)",
    merge=merge_peft,
    knob_docs={"r": "rank", "alpha": "update scaled by alpha / r", "dropout": "on the adapter input"},
)
def unet_lora(model: nn.Module, info: BackboneInfo, r: int = 8, alpha: float = 8, dropout: float = 0.0) -> nn.Module:
    """peft LoRA on every attention's query, key, value and output projection (to_q, to_k, to_v, to_out.0)."""
    import peft

    return inject(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=ATTENTION_PROJECTIONS))
