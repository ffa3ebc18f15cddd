"""`peft:<tuner>`: any adapter tuner of the Hugging Face peft library, on the layers it supports.

Targets by default: a ViT's attention and MLP projections in every block; a CNN's dense convolutions. Knobs go
straight to the tuner's config class (e.g. `peft:loha` with `knobs: {r: 8, alpha: 16}`); `target_modules` may
override the default targets. Whether a tuner fits a backbone is decided by applying it (at spec validation, on
PyTorch's meta device): peft's own error says why not.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.peft_tools import inject, merge_peft
from trainables.methods.registry import Method, MethodError, register_dynamic

VIT_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
# Tuners that need more than injection: a training-loop hook (AdaLoRA), prompt/token machinery of transformers
# models, or several adapters at once.
UNSUPPORTED = {"adalora": "needs update_and_allocate() in the training loop; use peft:lora",
               "xlora": "mixes several trained LoRA adapters", "poly": "multi-task routing",
               "trainable_tokens": "for token embeddings of language models"}
ALIASES = {"dora": ("lora", {"use_dora": True})}


def dense_convs(model: nn.Module, head: str | None) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and not (head and n.startswith(head))]


def default_targets(model: nn.Module, info: BackboneInfo) -> Any:
    if info.family == "unet":
        from trainables.methods.selectors import ATTENTION_PROJECTIONS

        return ATTENTION_PROJECTIONS
    return VIT_TARGETS if info.family == "vit" else dense_convs(model, info.head)


def _config_class(tuner: str):
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    configs = {str(k.value).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()
               if not issubclass(v, peft.PromptLearningConfig)}
    if tuner in UNSUPPORTED or tuner not in configs:
        why = UNSUPPORTED.get(tuner, "not a peft adapter tuner")
        known = ", ".join(sorted(set(configs) - set(UNSUPPORTED) | set(ALIASES)))
        raise MethodError(f"method 'peft:{tuner}': {why}; peft {peft.__version__} offers: {known}")
    return configs[tuner]


def peft_method(tuner: str) -> Method:
    import peft

    base, fixed = ALIASES.get(tuner, (tuner, {}))
    config_class = _config_class(base)

    def apply(model: nn.Module, info: BackboneInfo, **knobs: Any) -> nn.Module:
        knobs = {**fixed, **knobs}
        knobs.setdefault("target_modules", default_targets(model, info))
        if base == "ia3" and "feedforward_modules" not in knobs:
            # IA3 scales the input of feed-forward layers: the MLP's second projection in a ViT; none elsewhere.
            knobs["feedforward_modules"] = r".*blocks\.\d+\.mlp\.fc2" if info.family == "vit" else []
        try:
            config = config_class(**knobs)
        except TypeError as e:
            raise MethodError(f"method 'peft:{tuner}': {e}") from None
        return inject(model, config)

    return Method(
        name=f"peft:{tuner}",
        families=("vit", "cnn", "unet"),
        apply=apply,
        defaults=None,
        reference=f"Hugging Face peft {peft.__version__}, {config_class.__name__}",
        merge=merge_peft,
        summary=f"peft's {config_class.__name__.removesuffix('Config')} on the attention/MLP projections (ViT) "
        "or dense convolutions (CNN)",
    )


register_dynamic("peft", peft_method)
