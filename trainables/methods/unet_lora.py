from collections.abc import Sequence

from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.peft_tools import inject, merge_peft
from trainables.methods.registry import register_method
from trainables.methods.selectors import ATTENTION_PROJECTIONS


@register_method(
    "lora",
    families=("unet",),
    reference="Hu et al. 2021, LoRA, arXiv:2106.09685 (U-Net attention projections, via peft)",
    merge=merge_peft,
    knob_docs={"r": "rank", "alpha": "update scaled by alpha / r", "dropout": "on the adapter input",
               "targets": "which projections of every attention (of to_q, to_k, to_v, to_out.0); the study's "
                          "count (0.8M) is r 8 on to_q and to_v"},
)
def unet_lora(model: nn.Module, info: BackboneInfo, r: int = 8, alpha: float = 8, dropout: float = 0.0,
              targets: Sequence[str] = tuple(ATTENTION_PROJECTIONS)) -> nn.Module:
    """peft LoRA on the projections of every attention (by default query, key, value and output)."""
    import peft

    unknown = sorted(set(targets) - set(ATTENTION_PROJECTIONS))
    if unknown or not targets:
        raise ValueError(f"targets {list(targets)}: choose from {ATTENTION_PROJECTIONS}")
    return inject(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)))
