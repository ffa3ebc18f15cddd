"""The PEFT method registry: every method discoverable by name, with its families, knobs and reference.

A method is one function `apply(model, info, **knobs) -> model` that makes exactly its intended parameters
trainable (adding modules if it needs them). `prepare_model` does what every method shares: freeze everything
first, fill in default knobs, apply, always train the new classifier head, and record the BatchNorm mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.state import BnMode, count_parameters

FAMILIES = ("vit", "cnn", "unet")


class MethodError(ValueError):
    """A method that does not exist, does not fit a backbone, or got knobs it does not have."""


@dataclass(frozen=True)
class Method:
    name: str
    families: tuple[str, ...]
    apply: Callable[..., nn.Module]
    defaults: dict[str, Any]
    reference: str
    # BatchNorm statistics while training: "train" updates running stats (and saves them), "eval" keeps the
    # pretrained ones. An explicit choice per method because it changes the comparison on CNNs.
    bn_mode: BnMode = "eval"
    merge: Callable[[nn.Module], nn.Module] | None = None
    summary: str = ""
    knob_docs: dict[str, str] = field(default_factory=dict)


# A name may have one implementation per family: `lora` is the same idea on a ViT (q and v of the fused qkv) and
# on a U-Net (to_q/to_k/to_v/to_out), written twice.
_METHODS: dict[str, list[Method]] = {}
_DYNAMIC: dict[str, Callable[[str], Method]] = {}  # prefix (e.g. "peft") -> factory for "prefix:<name>"


def register_method(
    name: str,
    *,
    families: tuple[str, ...],
    reference: str,
    bn_mode: BnMode = "eval",
    merge: Callable[[nn.Module], nn.Module] | None = None,
    knob_docs: dict[str, str] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `apply(model, info, **knobs)`; its keyword defaults are the method's documented knob defaults."""

    def decorate(apply: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if any(set(m.families) & set(families) for m in _METHODS.get(name, [])):
            raise ValueError(f"method {name!r} registered twice for the same family")
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"method {name!r}: unknown families {sorted(unknown)}")
        _METHODS.setdefault(name, []).append(Method(
            name=name,
            families=families,
            apply=apply,
            defaults=_keyword_defaults(apply),
            reference=reference,
            bn_mode=bn_mode,
            merge=merge,
            summary=(inspect.getdoc(apply) or "").split("\n\n")[0].replace("\n", " "),
            knob_docs=knob_docs or {},
        ))
        return apply

    return decorate


def register_dynamic(prefix: str, factory: Callable[[str], Method]) -> None:
    """Methods named `prefix:<anything>`, built on demand (e.g. `peft:ia3` for any peft tuner)."""
    _DYNAMIC[prefix] = factory


def get_method(name: str, family: str | None = None) -> Method:
    """The method of that name (for that backbone family, when it has one implementation per family)."""
    if name in _METHODS:
        entries = _METHODS[name]
        return next((m for m in entries if family in m.families), entries[0])
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _DYNAMIC:
        return _DYNAMIC[prefix](rest)
    raise MethodError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}, or peft:<tuner>")


def list_methods(family: str | None = None) -> list[Method]:
    methods = sorted((m for entries in _METHODS.values() for m in entries), key=lambda m: (m.name, m.families))
    return [m for m in methods if family is None or family in m.families]


def resolve_knobs(method: Method, knobs: dict[str, Any] | None) -> dict[str, Any]:
    knobs = dict(knobs or {})
    if method.defaults is not None:  # None: the method passes knobs through (checked when applied)
        unknown = set(knobs) - set(method.defaults)
        if unknown:
            known = ", ".join(sorted(method.defaults)) or "none"
            raise MethodError(f"method {method.name!r} has no knob(s) {sorted(unknown)}; its knobs: {known}")
        return {**method.defaults, **knobs}
    return knobs


@dataclass(frozen=True)
class PreparedModel:
    model: nn.Module
    method: Method
    knobs: dict[str, Any]
    bn_mode: BnMode
    trainable_params: int
    total_params: int


def prepare_model(
    model: nn.Module,
    info: BackboneInfo,
    method_name: str,
    knobs: dict[str, Any] | None = None,
    bn_mode: BnMode | None = None,
) -> PreparedModel:
    """Apply a method to a freshly built backbone: only the method's parameters and the head stay trainable."""
    method = get_method(method_name, info.family)
    if info.family not in method.families:
        families = sorted({f for m in _METHODS.get(method_name, [method]) for f in m.families})
        raise MethodError(
            f"method {method.name!r} does not fit backbone {info.name!r}: it supports "
            f"{'/'.join(families)} backbones, {info.name!r} is a {info.family}"
        )
    knobs = resolve_knobs(method, knobs)
    model.requires_grad_(False)
    try:
        model = method.apply(model, info, **knobs)
    except MethodError:
        raise
    except (ValueError, TypeError, NotImplementedError, KeyError) as e:
        raise MethodError(f"method {method.name!r} does not fit backbone {info.name!r}: {e}") from e
    if info.head:
        model.get_submodule(info.head).requires_grad_(True)
    trainable, total = count_parameters(model)
    return PreparedModel(model, method, knobs, bn_mode or method.bn_mode, trainable, total)


def _keyword_defaults(apply: Callable[..., nn.Module]) -> dict[str, Any] | None:
    params = list(inspect.signature(apply).parameters.values())[2:]  # after (model, info)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params}
