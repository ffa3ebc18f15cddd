"""SVDiff: every weight matrix W = U diag(s) V^T keeps U, V and s frozen and learns a shift of its singular values,
W' = U diag(ReLU(s + delta)) V^T. Han et al. 2023, arXiv:2303.11305. One-dimensional parameters (biases, norm
scales) may train too, at their own (smaller) learning rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.state import LR_SCALE


class SpectralShift(nn.Module):
    """A frozen Linear or Conv2d whose weight is rebuilt from its SVD with learned singular-value shifts."""

    def __init__(self, base: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.base = base
        weight = base.weight.detach().reshape(base.weight.shape[0], -1)
        rank = min(weight.shape)
        if weight.is_meta:  # counting parameters: shapes only
            u, s, vh = (torch.empty(weight.shape[0], rank, device="meta"), torch.empty(rank, device="meta"),
                        torch.empty(rank, weight.shape[1], device="meta"))
        else:
            u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        # Rebuilt from the frozen weights whenever the method is applied, so not saved with the trained shifts.
        self.register_buffer("u", u, persistent=False)
        self.register_buffer("s", s, persistent=False)
        self.register_buffer("vh", vh, persistent=False)
        self.delta = nn.Parameter(torch.zeros(rank, device=weight.device))

    def weight(self) -> torch.Tensor:
        w = (self.u * F.relu(self.s + self.delta)) @ self.vh
        return w.reshape(self.base.weight.shape).to(self.base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, nn.Linear):
            return F.linear(x, self.weight(), self.base.bias)
        return self.base._conv_forward(x, self.weight(), self.base.bias)


@register_method(
    "svdiff",
    families=("unet",),
    reference="Han et al. ICCV 2023, SVDiff, arXiv:2303.11305",
    knob_docs={"train_1d": "also train biases and norm scales/shifts",
               "lr_1d_scale": "their learning rate, as a fraction of the spectral shifts' learning rate"},
)
def svdiff(model: nn.Module, info: BackboneInfo, train_1d: bool = True, lr_1d_scale: float = 1e-3) -> nn.Module:
    """Learned shifts of the singular values of every weight matrix (linear and convolutional)."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SpectralShift(module))
    if train_1d:
        for name, param in model.named_parameters():
            if param.ndim == 1 and not name.endswith(".delta"):
                param.requires_grad_(True)
                setattr(param, LR_SCALE, lr_1d_scale)
    return model
