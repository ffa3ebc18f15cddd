"""One table-driven test over every `unet` method (the study's text-to-image arm), on the tiny random U-Net.

For each method: the trainable-parameter count equals a closed-form count written here from the untouched U-Net;
one optimizer step on a denoising loss changes exactly those parameters; a checkpoint of what was trained restores
identical outputs in a freshly built U-Net; LoRA merges without changing outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.diffusion_models import build_unet, text_width
from trainables.methods import (
    MethodError,
    list_methods,
    load_trainable_state,
    param_groups,
    prepare_model,
    trainable_state_dict,
)
from trainables.methods.unet_parts import transformer_blocks

KWARGS = {"text_encoder": "minilm"}


def numel(params) -> int:
    return sum(p.numel() for p in params)


def biases(m: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in m.named_parameters() if n.endswith("bias")]


def norms(m: nn.Module) -> list[nn.Parameter]:
    return [p for x in m.modules() if isinstance(x, nn.GroupNorm | nn.LayerNorm) for p in x.parameters()]


def attention(m: nn.Module) -> list[nn.Parameter]:
    return [p for block in transformer_blocks(m) for p in block.parameters()]


def union(*groups: list[nn.Parameter]) -> int:
    return numel({id(p): p for group in groups for p in group}.values())


def lora(m: nn.Module, r: int = 8) -> int:
    targets = [x for n, x in m.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    return sum(r * (x.in_features + x.out_features) for x in targets)


def svdiff(m: nn.Module) -> int:
    """A shift per singular value of every weight matrix (conv kernels flattened: min(out, in*k*k)), and one per
    norm layer (its scale vector is a 1 x C matrix with one singular value)."""
    layers = [x for x in m.modules() if isinstance(x, nn.Linear | nn.Conv2d)]
    norm_layers = [x for x in m.modules() if isinstance(x, nn.GroupNorm | nn.LayerNorm)]
    return sum(min(x.weight.shape[0], x.weight[0].numel()) for x in layers) + len(norm_layers)


def difffit(m: nn.Module) -> int:
    """Biases and norms, and per transformer block of width c: c each for attn1, attn2 and ff, and c each for
    to_q, to_k, to_v and to_out of both attentions (11 c)."""
    from diffusers.models.attention import BasicTransformerBlock

    widths = [x.norm1.normalized_shape[0] for x in m.modules() if isinstance(x, BasicTransformerBlock)]
    return union(biases(m), norms(m)) + 11 * sum(widths)


FORMULAS = {
    "full": lambda m: numel(m.parameters()),
    "attention": lambda m: numel(attention(m)),
    "bias": lambda m: numel(biases(m)),
    "norm": lambda m: numel(norms(m)),
    "norm_bias": lambda m: union(norms(m), biases(m)),
    "norm_bias_attention": lambda m: union(norms(m), biases(m), attention(m)),
    "lora": lora,
    "svdiff": svdiff,
    "difffit": difffit,
    "peft:lora": lora,
    # (IA)^3 scales the outputs of its targets (none of them is a feed-forward layer here)
    "peft:ia3": lambda m: sum(x.out_features for n, x in m.named_modules()
                              if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))),
}
METHODS = [m.name for m in list_methods(family="unet")] + ["peft:lora", "peft:ia3"]
STUDY = ["full", "attention", "bias", "norm", "norm_bias", "norm_bias_attention", "lora", "svdiff", "difffit"]


def build(method: str):
    unet, info = build_unet("tiny-sd", "random", KWARGS)  # seeded: the same "pretrained" U-Net every time
    return prepare_model(unet, info, method)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 16, 16, generator=g)
    context = torch.randn(4, 7, text_width("minilm", None), generator=g)
    return latents, torch.randn(latents.shape, generator=g), torch.tensor([10, 300, 600, 900]), context


def denoising_loss(unet: nn.Module, batch) -> torch.Tensor:
    latents, noise, t, context = batch
    return F.mse_loss(unet(latents + noise, t, encoder_hidden_states=context).sample, noise)


def test_every_unet_method_of_the_study_is_registered_and_has_a_formula():
    assert set(STUDY) <= set(METHODS)
    assert set(METHODS) <= set(FORMULAS)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_matches_formula(method):
    untouched, _ = build_unet("tiny-sd", "random", KWARGS)
    prepared = build(method)
    assert prepared.trainable_params == FORMULAS[method](untouched)
    assert prepared.trainable_params == numel(p for p in prepared.model.parameters() if p.requires_grad)
    assert 0 < prepared.trainable_params <= prepared.total_params


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_exactly_the_trainable_parameters(method, batch):
    prepared = build(method)
    unet = prepared.model
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(unet, 1e-3, 0.0))
    optimizer.zero_grad()
    denoising_loss(unet, batch).backward()
    optimizer.step()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:3]}"
    # LoRA's A gets no gradient while B is still zero (its product starts at zero by design): B must move.
    untouched = {n for n in trainable - changed if "lora_A" not in n}
    assert not untouched, f"trainable parameters that did not move: {sorted(untouched)[:3]}"
    if method == "svdiff":  # the 1-D parameters train at their own, smaller learning rate
        rates = sorted({group["lr"] for group in optimizer.param_groups})
        assert rates == [pytest.approx(1e-6), pytest.approx(1e-3)]


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_of_what_was_trained_restores_identical_outputs(method, batch):
    prepared = build(method)
    unet = prepared.model
    optimizer = torch.optim.SGD([p for p in unet.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        denoising_loss(unet, batch).backward()
        optimizer.step()
    state = trainable_state_dict(unet, "eval")
    assert numel(state.values()) == prepared.trainable_params
    fresh = build(method).model
    load_trainable_state(fresh, state)
    latents, _, t, context = batch
    with torch.no_grad():
        torch.testing.assert_close(fresh(latents, t, encoder_hidden_states=context).sample,
                                   unet(latents, t, encoder_hidden_states=context).sample, rtol=0, atol=0)


def test_lora_merges_into_the_unet_without_changing_outputs(batch):
    prepared = build("lora")
    with torch.no_grad():
        for param in prepared.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    latents, _, t, context = batch
    with torch.no_grad():
        before = prepared.model(latents, t, encoder_hidden_states=context).sample
        merged = prepared.method.merge(prepared.model)
        after = merged(latents, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_classification_methods_do_not_fit_a_unet():
    unet, info = build_unet("tiny-sd", "random", KWARGS)
    with pytest.raises(MethodError, match="supports vit backbones"):
        prepare_model(unet, info, "vpt_deep")


def test_study_methods_fit_stable_diffusion_v1_5_without_its_weights():
    """The real U-Net on the meta device: the paper's text-to-image arm can be planned offline."""
    from trainables.diffusion_models import probe

    full = probe("stable-diffusion-v1-5", "full")
    lora_sd = probe("stable-diffusion-v1-5", "lora")
    assert 859_000_000 < full.total_params < 860_000_000
    assert lora_sd.trainable_params == 1_594_368  # r=8 on q, k, v, out of SD1.5's 32 attention layers
    study_lora = probe("stable-diffusion-v1-5", "lora", {"targets": ["to_q", "to_v"]})
    assert study_lora.trainable_params == 797_184  # the study's 0.8M
