"""PEFT methods, one per module; importing this package registers them all."""

from trainables.methods import (  # noqa: F401  (registration)
    adaptformer,
    attention,
    batchnorm,
    bias,
    bitfit,
    conv_adapter,
    convpass,
    difffit,
    fact,
    full,
    layernorm,
    linear,
    lora,
    lora_conv,
    lora_qkv,
    norm,
    norm_bias,
    norm_bias_attention,
    peft_tuner,
    ssf,
    svdiff,
    unet_attention,
    unet_lora,
    vpt,
)
from trainables.methods.registry import (
    Method,
    MethodError,
    PreparedModel,
    get_method,
    list_methods,
    prepare_model,
    register_method,
)
from trainables.methods.state import (
    count_parameters,
    load_trainable_state,
    param_groups,
    train_mode,
    trainable_state_dict,
)

__all__ = [
    "Method",
    "MethodError",
    "PreparedModel",
    "count_parameters",
    "get_method",
    "list_methods",
    "load_trainable_state",
    "param_groups",
    "prepare_model",
    "register_method",
    "train_mode",
    "trainable_state_dict",
]
