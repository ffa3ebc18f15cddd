"""Every PEFT method on every backbone family it claims, through one set of checks: one table of cases, one tester.

The table comes from the method registry: every registered (method, family) pair on that family's tiny random
backbones (a ViT, a ResNet and an EfficientNet from timm, the tiny Stable Diffusion U-Net), plus the peft tuners
vouched for in `PEFT`. A method is expected to fit every family it registers for, and to be refused, with a
MethodError saying why, on every family it does not; a newly registered method is in the table without editing
this file (and fails `test_every_case_has_a_count_formula` until its formula is written here).

For each case: the trainable-parameter count equals a closed-form count written here from the method's definition
and the backbone's architecture (its published configuration: widths, depth, stages, channels; see `Arch`), never
by walking the model with the method's own selection rule; gradients reach only trainable parameters and training
moves every one of them (and lowers the classifiers' loss); a checkpoint of what was trained restores identical
outputs in a fresh model; a mergeable method merges without changing outputs and leaves the backbone as built.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from tests.conftest import BREASTMNIST
from trainables.backbones import build_backbone
from trainables.diffusion_models import build_unet, text_width
from trainables.methods import (
    MethodError,
    get_method,
    list_methods,
    load_trainable_state,
    param_groups,
    prepare_model,
    train_mode,
    trainable_state_dict,
)
from trainables.methods.peft_tuner import ALIASES, UNSUPPORTED
from trainables.methods.registry import FAMILIES
from trainables.methods.state import LR_SCALE

NUM_CLASSES = 3
SIZE = 32
UNET_KWARGS = {"text_encoder": "minilm"}
# The tiny random backbones each family is tested on.
BACKBONES = {"vit": ["test_vit"], "cnn": ["test_resnet", "test_efficientnet"], "unet": ["tiny-sd"]}
FAMILY_OF = {backbone: family for family, backbones in BACKBONES.items() for backbone in backbones}
# timm zero-initialises the last BatchNorm scale of every residual block: with random weights (unlike pretrained
# ones) nothing before it in the block would get a gradient, and the training check could not see the block.
BUILD_KWARGS = {"test_resnet": {"zero_init_last": False}}

# peft tuners (`peft:<tuner>`, any tuner of the library) vouched for, on the families listed: the whole tester
# runs on them. Every other tuner peft offers is probed by `test_every_peft_tuner_fits_or_is_refused_clearly`.
PEFT = {"peft:lora": ("vit", "cnn", "unet"), "peft:dora": ("vit", "cnn"), "peft:ia3": ("vit", "cnn", "unet"),
        "peft:loha": ("vit", "cnn"), "peft:lokr": ("vit", "cnn"), "peft:oft": ("vit",), "peft:boft": ("vit",),
        "peft:fourierft": ("vit",), "peft:hra": ("vit",), "peft:vera": ("vit",)}
# Checked for everything but the count: their factorisations are peft's business and change between releases.
PEFT_WITHOUT_FORMULA = {"peft:lokr", "peft:oft", "peft:boft", "peft:fourierft", "peft:hra", "peft:vera"}


@dataclass(frozen=True)
class Case:
    method: str
    backbone: str

    @property
    def family(self) -> str:
        return FAMILY_OF[self.backbone]

    def __str__(self) -> str:
        return f"{self.method}-{self.backbone}"


REGISTERED = [Case(m.name, backbone) for m in list_methods() for family in m.families
              for backbone in BACKBONES[family]]
CASES = REGISTERED + [Case(name, backbone) for name, families in PEFT.items() for family in families
                      for backbone in BACKBONES[family]]


def declared_families(name: str) -> set[str]:
    return {family for m in list_methods() if m.name == name for family in m.families}


# Every registered method on the first tiny backbone of each family it does not declare.
REFUSED = [Case(name, BACKBONES[family][0]) for name in sorted({m.name for m in list_methods()})
           for family in FAMILIES if family not in declared_families(name)]
# peft tuners refused by peft itself on a family, with the reason peft gives.
PEFT_REFUSED = {Case("peft:fourierft", "test_resnet"): "Conv2d",
                Case("peft:vera", "test_resnet"): "No layers types compatible with VeRA"}


# -- architectures, from their definitions -------------------------------------------------------------------

NORMS = ("bn", "ln", "gn")


@dataclass(frozen=True)
class Layer:
    """One parametrised layer as the architecture's definition gives it."""

    kind: str  # "conv", "linear", a norm ("bn", "ln", "gn": a scale and a shift per channel), "tensor"
    c_in: int = 0
    c_out: int = 0  # output channels / features; a norm's channels
    k: int = 1
    groups: int = 1
    bias: bool = False
    roles: frozenset[str] = frozenset()
    shape: tuple[int, ...] = ()  # a free parameter's shape (class token, position embedding)

    @property
    def fan_in(self) -> int:
        return self.c_in // self.groups * self.k * self.k

    @property
    def weight(self) -> int:
        if self.kind == "tensor":
            return math.prod(self.shape)
        return self.c_out if self.kind in NORMS else self.c_out * self.fan_in

    @property
    def biases(self) -> int:
        """Elements of its bias (a norm's shift included)."""
        return self.c_out if self.bias or self.kind in NORMS else 0

    @property
    def params(self) -> int:
        return self.weight + self.biases

    @property
    def dense(self) -> bool:
        return self.kind == "conv" and self.groups == 1

    def shapes(self) -> list[tuple[int, ...]]:
        if self.kind == "tensor":
            return [self.shape]
        if self.kind in NORMS:
            return [(self.c_out,), (self.c_out,)]
        weight = (self.c_out, self.c_in // self.groups, self.k, self.k) if self.kind == "conv" else (self.c_out, self.c_in)
        return [weight] + ([(self.c_out,)] if self.bias else [])


def conv(c_in: int, c_out: int, k: int, *roles: str, groups: int = 1, bias: bool = False) -> Layer:
    return Layer("conv", c_in, c_out, k, groups, bias, frozenset(roles))


def linear(c_in: int, c_out: int, *roles: str, bias: bool = True) -> Layer:
    return Layer("linear", c_in, c_out, bias=bias, roles=frozenset(roles))


def norm(kind: str, channels: int, *roles: str) -> Layer:
    return Layer(kind, channels, channels, roles=frozenset(roles))


def tensor(*shape: int, role: str) -> Layer:
    return Layer("tensor", shape=shape, roles=frozenset({role}))


@dataclass(frozen=True)
class Arch:
    """A backbone as its definition describes it: its layers, and the numbers they were generated from."""

    layers: list[Layer]
    numbers: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.numbers[name]
        except KeyError:
            raise AttributeError(name) from None

    def having(self, *roles: str, kinds: tuple[str, ...] | None = None) -> list[Layer]:
        return [x for x in self.layers if set(roles) <= x.roles and (kinds is None or x.kind in kinds)]

    @property
    def backbone(self) -> list[Layer]:
        return [x for x in self.layers if "head" not in x.roles]

    @property
    def head(self) -> int:
        return sum(x.params for x in self.having("head"))


def vit_arch(model: nn.Module) -> Arch:
    """timm's VisionTransformer from its configuration: width d, depth, MLP width h, patch p, tokens (patches and
    the class token). Per block: LayerNorm, qkv (d -> 3d), proj, LayerNorm, fc1 (d -> h), fc2 (h -> d)."""
    d, depth, h = model.embed_dim, len(model.blocks), model.blocks[0].mlp.fc1.out_features
    p, tokens = model.patch_embed.patch_size[0], model.patch_embed.num_patches + model.num_prefix_tokens
    layers = [conv(3, d, p, "patch_embed", bias=True), tensor(1, 1, d, role="cls_token"),
              tensor(1, tokens, d, role="pos_embed")]
    for _ in range(depth):
        layers += [norm("ln", d), linear(d, 3 * d, "qkv"), linear(d, d, "proj"), norm("ln", d),
                   linear(d, h, "fc1"), linear(h, d, "fc2")]
    layers += [norm("ln", d), linear(d, NUM_CLASSES, "head")]
    return Arch(layers, {"d": d, "depth": depth, "h": h, "tokens": tokens})


# timm's definitions of its tiny CNNs (timm/models/resnet.py `test_resnet`, efficientnet.py `_gen_test_efficientnet`).
TEST_RESNET = {"stem_width": 16, "channels": (32, 48, 48, 96), "blocks": ("basic", "basic", "bottleneck", "basic")}
# (block type, kernel, expansion, output channels, squeeze-excite ratio) per stage of one block: arch_def's
# cn_r1_k3_s1_e1_c16, er_r1_k3_s2_e4_c24, er_r1_k3_s2_e4_c32, ir_r1_k3_s2_e4_c48_se0.25, ir_r1_k3_s2_e4_c64_se0.25
TEST_EFFICIENTNET = {"stem": 24, "features": 256,
                     "blocks": (("cn", 3, 1, 16, 0), ("er", 3, 4, 24, 0), ("er", 3, 4, 32, 0), ("ir", 3, 4, 48, 0.25),
                                ("ir", 3, 4, 64, 0.25))}


def resnet_arch(stem_width: int, channels: tuple[int, ...], blocks: tuple[str, ...]) -> Arch:
    """ResNet with a deep stem (three 3x3 convolutions, the last to twice the stem width), one block per stage,
    strides 1, 2, 2, 2, and an average-pool + 1x1 projection where a block changes shape (avg_down). A basic block
    is two 3x3 convolutions; a bottleneck 1x1, 3x3, 1x1 to four times its width. BatchNorm after every conv."""
    sw = stem_width
    layers = [conv(3, sw, 3, "stem"), norm("bn", sw), conv(sw, sw, 3, "stem"), norm("bn", sw),
              conv(sw, 2 * sw, 3, "stem"), norm("bn", 2 * sw)]
    c = 2 * sw
    for i, (width, kind) in enumerate(zip(channels, blocks, strict=True)):
        out = 4 * width if kind == "bottleneck" else width
        shapes = [(c, width, 3), (width, width, 3)] if kind == "basic" else [(c, width, 1), (width, width, 3),
                                                                            (width, out, 1)]
        for c_in, c_out, k in shapes:  # the block's own convolutions (attributes of the block)
            layers += [conv(c_in, c_out, k, "block", "block_conv"), norm("bn", c_out, "block")]
        if i > 0 or c != out:  # the shortcut projection, inside the block's `downsample`
            layers += [conv(c, out, 1, "block", "downsample"), norm("bn", out, "block")]
        c = out
    return Arch([*layers, linear(c, NUM_CLASSES, "head")], {})


def efficientnet_arch(stem: int, features: int, blocks: tuple) -> Arch:
    """EfficientNet: a 3x3 stride-2 stem, then per block (BatchNorm after every conv) `cn` a k x k conv; `er` a
    k x k expansion conv and a 1x1 projection; `ir` a 1x1 expansion, a k x k depthwise conv, squeeze-excite
    (1x1 convs with biases, reducing to input channels x ratio) and a 1x1 projection; then a 1x1 conv to the
    feature width."""
    layers, c = [conv(3, stem, 3, "stem"), norm("bn", stem)], stem
    for kind, k, expansion, out, se in blocks:
        mid = c * expansion
        if kind == "cn":  # timm's ConvBnAct
            parts = [conv(c, out, k, "block", "block_conv", "conv_bn_act"), norm("bn", out, "block")]
        elif kind == "er":
            parts = [conv(c, mid, k, "block", "block_conv"), norm("bn", mid, "block"),
                     conv(mid, out, 1, "block", "block_conv"), norm("bn", out, "block")]
        else:
            reduced = int(c * se)
            parts = [conv(c, mid, 1, "block", "block_conv"), norm("bn", mid, "block"),
                     conv(mid, mid, k, "block", "block_conv", groups=mid), norm("bn", mid, "block"),
                     conv(mid, reduced, 1, "block", "se", bias=True), conv(reduced, mid, 1, "block", "se", bias=True),
                     conv(mid, out, 1, "block", "block_conv"), norm("bn", out, "block")]
        layers += parts
        c = out
    layers += [conv(c, features, 1, "conv_head"), norm("bn", features), linear(features, NUM_CLASSES, "head")]
    return Arch(layers, {})


def unet_arch(config: dict) -> Arch:
    """diffusers' UNet2DConditionModel from its config: conv_in, a time embedding (two linears to 4 x the first
    width), down blocks of residual blocks (each beside a transformer in a cross-attention block) and a
    downsampler but the last, a middle of two residual blocks around a transformer, up blocks of one residual
    block more each taking a skip connection, and an upsampler but the last; GroupNorm and conv_out.
    A residual block: GroupNorm, 3x3 conv, time projection, GroupNorm, 3x3 conv, 1x1 shortcut when the width
    changes. A transformer of width c: GroupNorm, 1x1 proj_in, [LayerNorm, self-attention (q, k, v without bias,
    out with), LayerNorm, cross-attention (k and v from the text width), LayerNorm, GEGLU feed-forward (c -> 8c,
    4c -> c)], 1x1 proj_out."""
    widths, per_block, text = config["block_out_channels"], config["layers_per_block"], config["cross_attention_dim"]
    time = 4 * widths[0]
    layers = [conv(config["in_channels"], widths[0], 3, bias=True), linear(widths[0], time), linear(time, time)]
    transformers: list[int] = []

    def resnet(c_in: int, c_out: int) -> list[Layer]:
        shortcut = [conv(c_in, c_out, 1, bias=True)] if c_in != c_out else []
        return [norm("gn", c_in), conv(c_in, c_out, 3, bias=True), linear(time, c_out), norm("gn", c_out),
                conv(c_out, c_out, 3, bias=True), *shortcut]

    def transformer(c: int) -> list[Layer]:
        transformers.append(c)
        t = ("transformer",)
        projections = [linear(c, c, *t, "attn_proj", bias=False)] * 3 + [linear(c, c, *t, "attn_proj")]
        cross = [linear(c, c, *t, "attn_proj", bias=False)] + [linear(text, c, *t, "attn_proj", bias=False)] * 2 \
            + [linear(c, c, *t, "attn_proj")]
        return [norm("gn", c, *t), conv(c, c, 1, *t, bias=True), norm("ln", c, *t), *projections, norm("ln", c, *t),
                *cross, norm("ln", c, *t), linear(c, 8 * c, *t), linear(4 * c, c, *t), conv(c, c, 1, *t, bias=True)]

    c, last = widths[0], len(widths) - 1
    for i, kind in enumerate(config["down_block_types"]):
        for _ in range(per_block):
            layers += resnet(c, widths[i]) + (transformer(widths[i]) if kind.startswith("CrossAttn") else [])
            c = widths[i]
        layers += [conv(c, c, 3, bias=True)] if i < last else []
    layers += resnet(c, c) + transformer(c) + resnet(c, c)
    up = list(reversed(widths))
    for i, kind in enumerate(config["up_block_types"]):
        out, skip_from = up[i], up[min(i + 1, last)]
        for j in range(per_block + 1):
            layers += resnet(c + (skip_from if j == per_block else out), out)
            layers += transformer(out) if kind.startswith("CrossAttn") else []
            c = out
        layers += [conv(c, c, 3, bias=True)] if i < last else []
    layers += [norm("gn", c), conv(c, config["out_channels"], 3, bias=True)]
    return Arch(layers, {"transformers": transformers})


ARCHS: dict[str, Callable[[nn.Module], Arch]] = {
    "test_vit": vit_arch,
    "test_resnet": lambda model: resnet_arch(**TEST_RESNET),
    "test_efficientnet": lambda model: efficientnet_arch(**TEST_EFFICIENTNET),
    "tiny-sd": lambda model: unet_arch(dict(model.config)),
}


# -- the count formulas, from each method's definition -------------------------------------------------------


def every_parameter(a: Arch) -> int:
    return sum(x.params for x in a.backbone)


def every_bias(a: Arch) -> int:
    """Every bias term, the norms' shifts included."""
    return sum(x.biases for x in a.backbone)


def norm_channels(a: Arch, kinds: tuple[str, ...] = NORMS) -> int:
    return sum(x.c_out for x in a.layers if x.kind in kinds)


def lora(layers: list[Layer], r: int = 8) -> int:
    """A (r x fan-in) and B (out x r) per layer (peft's convolutional LoRA: an r-channel k x k conv, then 1x1)."""
    return sum(r * x.fan_in + x.c_out * r for x in layers)


def loha(layers: list[Layer], r: int = 8) -> int:
    """Two Hadamard-multiplied low-rank pairs per layer."""
    return sum(2 * r * (x.fan_in + x.c_out) for x in layers)


def dense_convs(a: Arch) -> list[Layer]:
    return [x for x in a.backbone if x.dense]


def conv_adapter(x: Layer, reduction: int = 8) -> int:
    """Conv-Adapter beside a k x k conv: a k x k grouped conv down to c_in / reduction (groups: gcd of the two),
    a 1x1 conv up, and a per-channel scale."""
    hidden = x.c_in // reduction
    groups = math.gcd(x.c_in, hidden)
    return hidden * (x.c_in // groups) * x.k * x.k + hidden + hidden * x.c_out + x.c_out + x.c_out


def vit_linears(a: Arch) -> list[Layer]:
    """qkv, proj, fc1 and fc2 of every block: peft's default targets in a ViT."""
    return [x for x in a.layers if x.roles & {"qkv", "proj", "fc1", "fc2"}]


def ssf_vit(a: Arch) -> int:
    """A scale and a shift after the patch embedding (d), every block's qkv (3d), proj (d), fc1 (h), fc2 (d) and
    both LayerNorms (d each), and the final LayerNorm (d)."""
    d, h = a.d, a.h
    return 2 * (d + a.depth * (3 * d + d + h + d + 2 * d) + d)


def fact(a: Arch, rank: int, tucker: bool) -> int:
    """Shared U (d x r) and V (r x d); slots of d x d: 3 (qkv) + 1 (proj) + h/d (fc1) + h/d (fc2) per block, each
    its own r x r core (tensor-train) or an r-vector of factors for one shared r x r x r core (Tucker)."""
    slots = a.depth * (3 + 1 + 2 * (a.h // a.d))
    return 2 * a.d * rank + (rank**3 + slots * rank if tucker else slots * rank * rank)


def unet_union(a: Arch, *, attention: bool) -> int:
    """Norm layers and every bias, and (with `attention`) every parameter of the transformer blocks."""
    return sum(x.params if attention and "transformer" in x.roles else x.biases + (x.weight if x.kind in NORMS else 0)
               for x in a.layers)


# Trainable parameters (besides the new head) each method must leave, from the untouched backbone's architecture.
FORMULAS: dict[tuple[str, str], Callable[[Arch], int]] = {
    ("full", "vit"): every_parameter,
    ("full", "cnn"): every_parameter,
    ("full", "unet"): every_parameter,
    ("linear", "vit"): lambda a: 0,
    ("linear", "cnn"): lambda a: 0,
    # ViT: the patch embedding's bias, per block those of both LayerNorms, qkv (3d), proj, fc1 (h) and fc2, and
    # the final LayerNorm's shift.
    ("bitfit", "vit"): lambda a: a.d + a.depth * (a.d + 3 * a.d + a.d + a.d + a.h + a.d) + a.d,
    ("bitfit", "cnn"): every_bias,  # convolutions without bias: the BatchNorm shifts (and squeeze-excite biases)
    ("bias", "cnn"): every_bias,
    ("bias", "unet"): every_bias,
    ("layernorm", "vit"): lambda a: 2 * a.d * (2 * a.depth + 1),
    ("batchnorm", "cnn"): lambda a: 2 * norm_channels(a, ("bn",)),
    ("attention", "vit"): lambda a: a.depth * (a.d * 3 * a.d + 3 * a.d + a.d * a.d + a.d) + a.tokens * a.d,
    ("attention", "unet"): lambda a: sum(x.params for x in a.having("transformer")),
    ("tsa", "cnn"): lambda a: sum(x.c_out * x.c_in // x.groups for x in a.having("block_conv")),
    ("conv_adapter", "cnn"): lambda a: sum(conv_adapter(x) for x in a.having("block", kinds=("conv",)) if x.k > 1),
    ("vpt_shallow", "vit"): lambda a: 10 * a.d,
    ("vpt_deep", "vit"): lambda a: a.depth * 10 * a.d,
    ("adaptformer", "vit"): lambda a: a.depth * (a.d * 64 + 64 + 64 * a.d + a.d),
    # per block, beside attention and MLP: down d -> 8, a 3x3 conv 8 -> 8, up 8 -> d (with biases)
    ("convpass", "vit"): lambda a: a.depth * 2 * (a.d * 8 + 8 + 8 * 8 * 9 + 8 + 8 * a.d + a.d),
    ("lora", "vit"): lambda a: a.depth * 2 * 8 * (a.d + a.d),  # q and v: r (d_in + d_out) each
    ("lora", "unet"): lambda a: lora(a.having("attn_proj")),  # to_q, to_k, to_v, to_out of every attention
    ("lora_qkv", "vit"): lambda a: a.depth * 8 * (a.d + 3 * a.d),
    ("lora_conv", "cnn"): lambda a: lora(dense_convs(a)),
    ("ssf", "vit"): ssf_vit,
    ("ssf", "cnn"): lambda a: 2 * norm_channels(a, ("bn",)),  # a scale and a shift per BatchNorm channel
    ("fact_tt", "vit"): lambda a: fact(a, 8, tucker=False),
    ("fact_tk", "vit"): lambda a: fact(a, 16, tucker=True),
    ("norm", "unet"): lambda a: 2 * norm_channels(a),
    ("norm_bias", "unet"): lambda a: unet_union(a, attention=False),
    ("norm_bias_attention", "unet"): lambda a: unet_union(a, attention=True),
    # one shift per singular value of every weight matrix (out x fan-in), one per norm layer (its 1 x C scale)
    ("svdiff", "unet"): lambda a: sum(min(x.c_out, x.fan_in) for x in a.layers if x.kind in ("conv", "linear"))
    + sum(x.kind in NORMS for x in a.layers),
    # biases and norms, and a scale per channel of attn1, attn2, ff and of both attentions' q, k, v, out (11 c)
    ("difffit", "unet"): lambda a: unet_union(a, attention=False) + 11 * sum(a.transformers),
    ("peft:lora", "vit"): lambda a: lora(vit_linears(a)),
    ("peft:lora", "cnn"): lambda a: lora(dense_convs(a)),
    ("peft:lora", "unet"): lambda a: lora(a.having("attn_proj")),
    ("peft:dora", "vit"): lambda a: lora(vit_linears(a)) + sum(x.c_out for x in vit_linears(a)),  # + magnitudes
    ("peft:dora", "cnn"): lambda a: lora(dense_convs(a)) + sum(x.c_out for x in dense_convs(a)),
    # (IA)^3 scales outputs, and the input of feed-forward layers (a ViT's fc2)
    ("peft:ia3", "vit"): lambda a: a.depth * (3 * a.d + a.d + a.h + a.h),
    ("peft:ia3", "cnn"): lambda a: sum(x.c_out for x in dense_convs(a)),
    ("peft:ia3", "unet"): lambda a: sum(x.c_out for x in a.having("attn_proj")),
    ("peft:loha", "vit"): lambda a: loha(vit_linears(a)),
    ("peft:loha", "cnn"): lambda a: loha(dense_convs(a)),
}

# Counts known to fall short of the definition, by exactly the parameters given here (the test fails when the
# shortfall changes, or goes away: then delete the entry). Empty: TSA and Conv-Adapter missed timm's ConvBnAct
# blocks (test_efficientnet's first stage) until cnn_parts.BLOCK_TYPES listed them.
COUNT_DISAGREEMENTS: dict[Case, tuple[str, Callable[[Arch], int]]] = {}


# -- what differs between families: building, a batch, a loss --------------------------------------------------


@functools.cache
def classification_batch() -> tuple[torch.Tensor, torch.Tensor]:
    if BREASTMNIST.is_file():
        with np.load(BREASTMNIST) as npz:
            images, labels = npz["train_images"][:32], npz["train_labels"].reshape(-1)[:32]
        x = F.interpolate(torch.tensor(images, dtype=torch.float32)[:, None] / 255, size=SIZE)
        x = (x.expand(-1, 3, -1, -1) - 0.5) / 0.5
        return x, torch.tensor(labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, SIZE, SIZE, generator=generator), torch.randint(0, 2, (32,), generator=generator)


@functools.cache
def unet_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 16, 16, generator=g)
    context = torch.randn(4, 7, text_width("minilm", None), generator=g)
    return latents, torch.randn(latents.shape, generator=g), torch.tensor([10, 300, 600, 900]), context


@dataclass(frozen=True)
class Family:
    build: Callable[[str, str | None], tuple[nn.Module, Any]]  # (backbone, device) -> untouched (model, info)
    probe: Callable[[str, str], Any]  # (backbone, method) -> PreparedModel, on the meta device
    batch: Callable[[], tuple]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    outputs: Callable[[nn.Module, tuple], torch.Tensor]
    steps: int  # optimizer steps of the training check (the last step moves what a zero-initialised partner hid)
    lr: float
    lowers_loss: bool  # whether those steps must lower the loss
    perturbation: float  # noise added to trained parameters before merging
    merge_tolerance: float


def _build_classifier(backbone: str, device: str | None = None):
    return build_backbone(backbone, NUM_CLASSES, weights="random", image_size=SIZE, device=device,
                          **BUILD_KWARGS.get(backbone, {}))


def _probe_classifier(backbone: str, method: str):
    from trainables.probe import probe

    return probe(backbone, method, image_size=SIZE, num_classes=NUM_CLASSES, **BUILD_KWARGS.get(backbone, {}))


def _probe_unet(backbone: str, method: str):
    from trainables.diffusion_models import probe

    return probe(backbone, method, weights="random", **UNET_KWARGS)


def _denoise(unet: nn.Module, batch: tuple, noisy: bool) -> torch.Tensor:
    latents, noise, t, context = batch
    return unet(latents + noise if noisy else latents, t, encoder_hidden_states=context).sample


CLASSIFIER = Family(_build_classifier, _probe_classifier, classification_batch,
                    lambda model, b: F.cross_entropy(model(b[0]), b[1]), lambda model, b: model(b[0]),
                    steps=15, lr=3e-3, lowers_loss=True, perturbation=0.02, merge_tolerance=1e-5)
UNET = Family(lambda backbone, device=None: build_unet(backbone, "random", UNET_KWARGS, device), _probe_unet,
              unet_batch, lambda unet, b: F.mse_loss(_denoise(unet, b, noisy=True), b[1]),
              lambda unet, b: _denoise(unet, b, noisy=False),
              steps=2, lr=1e-3, lowers_loss=False, perturbation=0.05, merge_tolerance=1e-4)
HARNESS = {"vit": CLASSIFIER, "cnn": CLASSIFIER, "unet": UNET}


def build(case: Case, seed: int = 0):
    """The untouched backbone (the same "pretrained" weights for the same seed) with the case's method applied."""
    torch.manual_seed(seed)
    model, info = HARNESS[case.family].build(case.backbone, None)
    return model, info, prepare_model(model, info, case.method)


def numel(params) -> int:
    return sum(p.numel() for p in params)


def start_from_a_nonzero_head(model: nn.Module, info) -> None:
    if info.head:  # a zero head (how backbones start) would block every gradient
        nn.init.normal_(model.get_submodule(info.head).weight, std=0.1)


# -- the tables are complete -------------------------------------------------------------------------------------


def test_every_family_has_tiny_backbones_with_architectures():
    assert set(BACKBONES) == set(FAMILIES)
    assert set(ARCHS) == set(FAMILY_OF)
    assert set(HARNESS) == set(FAMILIES)


def test_every_case_has_a_count_formula():
    missing = {(c.method, c.family) for c in CASES if c.method not in PEFT_WITHOUT_FORMULA} - set(FORMULAS)
    assert not missing, f"write the count formula of {sorted(missing)} in FORMULAS"
    stale = set(FORMULAS) - {(c.method, c.family) for c in CASES}
    assert not stale, f"formulas of no registered method: {sorted(stale)}"
    assert set(PEFT) >= PEFT_WITHOUT_FORMULA
    assert set(COUNT_DISAGREEMENTS) <= set(CASES)
    assert {tuner for tuner, _ in UNCLEAR_REFUSALS} <= set(peft_tuners())
    assert not set(PEFT_REFUSED) & set(CASES)
    assert len(list_methods(family="vit")) >= 14 and len(list_methods(family="cnn")) >= 9


def test_every_unet_method_of_the_study_is_registered():
    study = {"full", "attention", "bias", "norm", "norm_bias", "norm_bias_attention", "lora", "svdiff", "difffit"}
    assert study <= {m.name for m in list_methods(family="unet")}


@pytest.mark.parametrize("backbone", list(FAMILY_OF))
def test_architecture_descriptions_are_the_backbones(backbone):
    """The layers `Arch` describes are the backbone's: the same parameter shapes, and so the same total."""
    model, _ = HARNESS[FAMILY_OF[backbone]].build(backbone, "meta")
    arch = ARCHS[backbone](model)
    assert sorted(s for x in arch.layers for s in x.shapes()) == sorted(tuple(p.shape) for p in model.parameters())
    assert sum(x.params for x in arch.layers) == numel(model.parameters())


# -- the checks, on every case ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.method not in PEFT_WITHOUT_FORMULA], ids=str)
def test_trainable_count_matches_formula(case):
    untouched, _ = HARNESS[case.family].build(case.backbone, "meta")
    arch = ARCHS[case.backbone](untouched)
    _, _, prepared = build(case)
    if (case.method, case.family) not in FORMULAS:
        pytest.fail(f"no count formula for {case.method} on a {case.family}: write it in FORMULAS")
    expected = FORMULAS[(case.method, case.family)](arch) + arch.head
    if case in COUNT_DISAGREEMENTS:
        why, shortfall = COUNT_DISAGREEMENTS[case]
        assert prepared.trainable_params != expected, f"{case} matches its definition now: delete its entry"
        assert shortfall(arch) > 0 and prepared.trainable_params == expected - shortfall(arch), why
    else:
        assert prepared.trainable_params == expected
    assert prepared.trainable_params == numel(p for p in prepared.model.parameters() if p.requires_grad)
    assert 0 < prepared.trainable_params <= prepared.total_params
    # What spec validation counts (the method applied on the meta device) is what trains.
    assert HARNESS[case.family].probe(case.backbone, case.method).trainable_params == prepared.trainable_params


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_reach_only_trainable_parameters_and_training_moves_them(case):
    harness = HARNESS[case.family]
    model, info, prepared = build(case)
    start_from_a_nonzero_head(model, info)
    batch = harness.batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(param_groups(model, harness.lr, 0.0))
    train_mode(model, prepared.bn_mode)
    losses = []
    for step in range(harness.steps):
        optimizer.zero_grad()
        loss = harness.loss(model, batch)
        loss.backward()
        if step == 0:
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    assert param.grad is None, f"{name} is frozen but got a gradient"
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:3]}"
    assert not trainable - changed, f"trainable parameters that did not move: {sorted(trainable - changed)[:3]}"
    # Each parameter trains at the trial's rate, or at the fraction of it its method gave it.
    rates = sorted({harness.lr * getattr(p, LR_SCALE, 1.0) for p in model.parameters() if p.requires_grad})
    assert sorted({group["lr"] for group in optimizer.param_groups}) == pytest.approx(rates)
    if harness.lowers_loss:
        assert losses[-1] < losses[0]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_checkpoint_of_what_was_trained_restores_identical_outputs(case):
    harness = HARNESS[case.family]
    model, info, prepared = build(case)
    batch = harness.batch()
    start_from_a_nonzero_head(model, info)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    train_mode(model, prepared.bn_mode)
    for _ in range(2):
        optimizer.zero_grad()
        harness.loss(model, batch).backward()
        optimizer.step()
    state = trainable_state_dict(model, prepared.bn_mode)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) \
        == prepared.trainable_params
    fresh, _, _ = build(case)  # same seed: the same frozen "pretrained" weights
    load_trainable_state(fresh, state)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(harness.outputs(fresh, batch), harness.outputs(model, batch), rtol=0, atol=0)


MERGEABLE = [c for c in CASES if get_method(c.method, c.family).merge is not None]


def layout(model: nn.Module) -> tuple:
    """Module types, parameter and buffer names and shapes, and whatever is hooked or parametrised."""
    return (Counter(type(m).__name__ for m in model.modules()),
            {k: tuple(v.shape) for k, v in model.state_dict().items()},
            [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks
             or parametrize.is_parametrized(m)])


@pytest.mark.parametrize("case", MERGEABLE, ids=str)
def test_merging_keeps_outputs_and_leaves_the_backbone_as_built(case):
    harness = HARNESS[case.family]
    model, _info, prepared = build(case)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * harness.perturbation)  # make the adapter do something
    model.eval()
    batch = harness.batch()
    with torch.no_grad():
        before = harness.outputs(model, batch)
        merged = prepared.method.merge(model)
        after = harness.outputs(merged, batch)
    torch.testing.assert_close(after, before, rtol=harness.merge_tolerance, atol=1e-5)
    untouched, _ = harness.build(case.backbone, None)
    assert layout(merged) == layout(untouched), "merging left adapter modules, parameters or hooks behind"


# -- methods that do not fit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_registered_methods_refuse_the_families_they_do_not_declare(case):
    model, info = HARNESS[case.family].build(case.backbone, "meta")
    with pytest.raises(MethodError) as error:
        prepare_model(model, info, case.method)
    message = str(error.value)
    assert repr(case.method) in message and repr(case.backbone) in message
    assert f"supports {'/'.join(sorted(declared_families(case.method)))} backbones" in message
    assert f"is a {case.family}" in message


@pytest.mark.parametrize(("case", "why"), list(PEFT_REFUSED.items()), ids=str)
def test_peft_tuners_that_do_not_fit_are_refused_with_peft_s_reason(case, why):
    model, info = HARNESS[case.family].build(case.backbone, None)
    with pytest.raises(MethodError) as error:
        prepare_model(model, info, case.method)
    assert case.method in str(error.value) and why in str(error.value)
    assert case.backbone in str(error.value) or "peft" in str(error.value)


def peft_tuners() -> list[str]:
    """Every tuner `peft:<tuner>` can name: peft's adapter tuners and our aliases, less those refused outright."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    offered = {str(k.value).lower() for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()
               if not issubclass(v, peft.PromptLearningConfig)}
    return sorted(offered - set(UNSUPPORTED) | set(ALIASES))


# Known unclear refusals, (tuner, family), in the peft versions we allow: a new unclear one fails the test, and so
# does an entry whose tuner now fits (then delete it).
# - "meta": refused for a limit of the meta device, not of the tuner (they fit on the CPU). trainables/probe.py
#   retries on the CPU after a RuntimeError naming "meta", but prepare_model has already turned the
#   NotImplementedError (a RuntimeError) into a MethodError, so spec validation refuses a tuner that fits.
# - "bare key": the reason is a KeyError's repr (TinyLoRA on a CNN: "'conv1.0'").
UNCLEAR_REFUSALS = {("adamss", "vit"): "meta", ("adamss", "unet"): "meta", ("frod", "vit"): "meta",
                    ("frod", "unet"): "meta", ("shira", "vit"): "meta", ("unilora", "vit"): "meta",
                    ("unilora", "unet"): "meta", ("tinylora", "cnn"): "bare key"}


def unclear(reason: str) -> str | None:
    if "meta" in reason.lower():
        return "meta"
    return "bare key" if " " not in reason.strip() else None


@pytest.mark.parametrize("tuner", peft_tuners())
def test_every_peft_tuner_fits_or_is_refused_clearly(tuner):
    """On the first tiny backbone of each family, as spec validation probes it: it trains something, or it is a
    MethodError that names the method and the backbone and says why in words (not the meta device's limits)."""
    method = f"peft:{tuner}"
    for family, backbones in BACKBONES.items():
        try:
            prepared = HARNESS[family].probe(backbones[0], method)
        except MethodError as error:
            message = str(error)
            assert method in message and repr(backbones[0]) in message, message
            problem = unclear(message.partition(f"{backbones[0]!r}: ")[2])
            # An entry is a known-unclear refusal; a peft release that words it clearly is no failure.
            assert problem in (None, UNCLEAR_REFUSALS.get((tuner, family))), f"{family}: {message}"
        else:
            assert (tuner, family) not in UNCLEAR_REFUSALS, f"{method} fits a {family} now: delete its entry"
            assert 0 < prepared.trainable_params <= prepared.total_params


@pytest.mark.parametrize("tuner", sorted(UNSUPPORTED))
def test_peft_tuners_needing_more_than_injection_are_refused_with_the_reason(tuner):
    model, info = _build_classifier("test_vit", "meta")
    with pytest.raises(MethodError, match=f"peft:{tuner}") as error:
        prepare_model(model, info, f"peft:{tuner}")
    assert UNSUPPORTED[tuner] in str(error.value)


def test_vouched_peft_tuners_fit_the_families_listed():
    for name, families in PEFT.items():
        for family in families:
            for backbone in BACKBONES[family]:
                assert HARNESS[family].probe(backbone, name).trainable_params > 0


def test_unknown_knobs_and_methods_are_errors():
    model, info = _build_classifier("test_vit")
    with pytest.raises(MethodError, match="has no knob"):
        prepare_model(model, info, "lora", {"rank": 4})
    with pytest.raises(MethodError, match="unknown method"):
        prepare_model(model, info, "lora_everywhere")
    with pytest.raises(MethodError, match="peft:adalora"):
        prepare_model(model, info, "peft:adalora")


# -- what single methods promise besides ---------------------------------------------------------------------


def test_svdiff_trains_the_norm_shifts_at_a_thousandth_of_the_rate():
    """As the reference: 1e-6 for the 1-D (norm) shifts against 1e-3 for the rest."""
    _, _, prepared = build(Case("svdiff", "tiny-sd"))
    rates = sorted({group["lr"] for group in param_groups(prepared.model, 1e-3, 0.0)})
    assert rates == [pytest.approx(1e-6), pytest.approx(1e-3)]


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_gradient_checkpointing_keeps_the_prompts(method):
    """timm's gradient checkpointing calls the blocks one by one (checkpoint_seq), which would skip the prompts;
    with VPT it checkpoints inside the prompted blocks instead: same outputs, and the prompts still learn."""
    model, info, _ = build(Case(method, "test_vit"))
    start_from_a_nonzero_head(model, info)
    x, _ = classification_batch()
    model.eval()
    with torch.no_grad():
        plain = model(x)
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    torch.testing.assert_close(checkpointed, plain)
    checkpointed.sum().backward()
    assert model.blocks.prompts.grad is not None and model.blocks.prompts.grad.abs().sum() > 0


def test_study_methods_fit_stable_diffusion_v1_5_without_its_weights():
    """The real U-Net on the meta device: the paper's text-to-image arm can be planned offline."""
    from trainables.diffusion_models import probe

    full = probe("stable-diffusion-v1-5", "full")
    lora_sd = probe("stable-diffusion-v1-5", "lora")
    assert 859_000_000 < full.total_params < 860_000_000
    assert lora_sd.trainable_params == 1_594_368  # r=8 on q, k, v, out of SD1.5's 32 attention layers
    study_lora = probe("stable-diffusion-v1-5", "lora", {"targets": ["to_q", "to_v"]})
    assert study_lora.trainable_params == 797_184  # the study's 0.8M
