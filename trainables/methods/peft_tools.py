"""What every method built on the `peft` library shares: injecting adapters into a plain timm model and
folding them back into the base weights."""

from __future__ import annotations

from torch import nn


def inject(model: nn.Module, config) -> nn.Module:
    """Add peft adapters in place (no PeftModel wrapper, so the model keeps timm's API). peft leaves exactly
    the adapter parameters trainable; `prepare_model` re-enables the head afterwards."""
    import peft

    try:
        return peft.inject_adapter_in_model(config, model)
    except ValueError as e:
        if "shared state" not in str(e):
            raise
    # Tuners with state shared between layers (VeRA's random projections) are set up by a PeftModel; it adapts
    # the model in place, and the adapted layers keep references to that shared state.
    return peft.get_peft_model(model, config).base_model.model


def merge_peft(model: nn.Module) -> nn.Module:
    """Fold every peft adapter into its base layer and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
