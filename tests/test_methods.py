"""One table-driven test over every registered (method, backbone family) pair, on tiny random backbones.

For each pair: the trainable-parameter count equals a closed-form count written here from the untouched
backbone; gradients reach only trainable parameters; a few steps on real images lower the loss; a checkpoint of
what was trained restores identical outputs in a fresh model; mergeable methods merge without changing outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import BREASTMNIST
from trainables.backbones import build_backbone
from trainables.methods import (
    list_methods,
    load_trainable_state,
    prepare_model,
    train_mode,
    trainable_state_dict,
)

NUM_CLASSES = 3
SIZE = 32
BACKBONES = {"vit": ["test_vit"], "cnn": ["test_resnet", "test_efficientnet"]}


def numel(params) -> int:
    return sum(p.numel() for p in params)


def head_params(model: nn.Module, info) -> int:
    return numel(model.get_submodule(info.head).parameters())


def dense_convs(model: nn.Module, info) -> list[nn.Conv2d]:
    return [m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and not n.startswith(info.head)]


# Trainable parameters each method must leave, counted on the untouched backbone.
FORMULAS = {
    "full": lambda m, info: numel(m.parameters()),
    "linear": lambda m, info: head_params(m, info),
    "bitfit": lambda m, info: numel(p for n, p in m.named_parameters()
                                    if n.endswith("bias") and not n.startswith(info.head + "."))
    + head_params(m, info),
    "lora_conv": lambda m, info: sum(8 * c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels * 8
                                     for c in dense_convs(m, info)) + head_params(m, info),
}

PAIRS = [(method.name, backbone) for method in list_methods() for family in method.families
         if family in BACKBONES for backbone in BACKBONES[family]]


def build(backbone: str, method: str, seed: int = 0):
    torch.manual_seed(seed)
    model, info = build_backbone(backbone, NUM_CLASSES, weights="random", image_size=SIZE)
    return model, info, prepare_model(model, info, method)


@pytest.fixture(scope="module")
def real_batch() -> tuple[torch.Tensor, torch.Tensor]:
    if BREASTMNIST.is_file():
        with np.load(BREASTMNIST) as npz:
            images, labels = npz["train_images"][:32], npz["train_labels"].reshape(-1)[:32]
        x = torch.nn.functional.interpolate(torch.tensor(images, dtype=torch.float32)[:, None] / 255, size=SIZE)
        x = (x.expand(-1, 3, -1, -1) - 0.5) / 0.5
        return x, torch.tensor(labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, SIZE, SIZE, generator=generator), torch.randint(0, 2, (32,), generator=generator)


def test_every_method_is_covered_by_a_formula():
    assert {m.name for m in list_methods()} <= set(FORMULAS)


@pytest.mark.parametrize(("method", "backbone"), PAIRS)
def test_trainable_count_matches_formula(method, backbone):
    torch.manual_seed(0)
    untouched, info = build_backbone(backbone, NUM_CLASSES, weights="random", image_size=SIZE)
    _, _, prepared = build(backbone, method)
    assert prepared.trainable_params == FORMULAS[method](untouched, info)
    assert prepared.trainable_params == numel(p for p in prepared.model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "backbone"), PAIRS)
def test_gradients_reach_only_trainable_parameters_and_training_lowers_the_loss(method, backbone, real_batch):
    model, info, prepared = build(backbone, method)
    nn.init.normal_(model.get_submodule(info.head).weight, std=0.1)  # a zero head would block all gradients
    x, y = real_batch
    train_mode(model, prepared.bn_mode)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, f"{name} is frozen but got a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    assert loss.item() < first


@pytest.mark.parametrize(("method", "backbone"), PAIRS)
def test_checkpoint_of_what_was_trained_restores_identical_outputs(method, backbone, real_batch):
    model, info, prepared = build(backbone, method)
    x, y = real_batch
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    nn.init.normal_(model.get_submodule(info.head).weight, std=0.1)
    train_mode(model, prepared.bn_mode)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    state = trainable_state_dict(model, prepared.bn_mode)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) \
        == prepared.trainable_params
    fresh, _, _ = build(backbone, method)  # same seed: the same frozen "pretrained" weights
    load_trainable_state(fresh, state)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


MERGEABLE = [(m, b) for m, b in PAIRS if next(x for x in list_methods() if x.name == m).merge is not None]


@pytest.mark.parametrize(("method", "backbone"), MERGEABLE)
def test_merging_keeps_outputs(method, backbone, real_batch):
    model, _info, prepared = build(backbone, method)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)  # make the adapter do something
    model.eval()
    x, _ = real_batch
    with torch.no_grad():
        before = model(x)
        merged = prepared.method.merge(model)
        after = merged(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert numel(merged.parameters()) == numel(build_backbone(backbone, NUM_CLASSES, "random", SIZE)[0].parameters())
