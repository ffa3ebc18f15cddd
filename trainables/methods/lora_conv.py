from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.peft_tools import inject, merge_peft
from trainables.methods.registry import register_method


@register_method(
    "lora_conv",
    families=("cnn",),
    reference="Hu et al. 2021, LoRA, arXiv:2106.09685 (on convolutions, via peft)",
    merge=merge_peft,
    knob_docs={"r": "rank", "alpha": "scale numerator (update scaled by alpha / r)", "dropout": "on the input"},
)
def lora_conv(model: nn.Module, info: BackboneInfo, r: int = 8, alpha: float = 8, dropout: float = 0.0) -> nn.Module:
    """peft LoRA on every dense Conv2d (depthwise/grouped convolutions are left frozen: LoRA's low-rank
    factorisation does not apply to them)."""
    import peft

    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.groups == 1 and not name.startswith(info.head or "\0")
    ]
    if not targets:
        raise ValueError("the backbone has no dense Conv2d layer to adapt")
    return inject(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets))
