"""SVDiff: spectral shifts. Han et al. ICCV 2023, arXiv:2303.11305; for the Stable Diffusion U-Net as the authors'
code (mkshing/svdiff-pytorch), which the study's count (0.22M) matches.

Every weight matrix W = U diag(s) V^T (conv kernels flattened to out x in*k*k) keeps U, V and s frozen and learns a
shift of its singular values: W' = U diag(ReLU(s + delta)) V^T. A norm layer's scale vector is a 1 x C matrix
with a single singular value, its length, so each GroupNorm and LayerNorm learns one shift of it (the reference
trains these at a learning rate a thousand times smaller, its `learning_rate_1d` 1e-6 against 1e-3). Nothing
else trains. SD v1.5: 222,696 shifts of its Linear and Conv2d layers + 109 of its norms = 222,805.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

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


class NormScaleShift(nn.Module):
    """A parametrization of a norm layer's scale vector w: ReLU(|w| + delta) w / |w|, the SVD of w as a 1 x C
    matrix with its one singular value shifted."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(1, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        length = weight.norm()
        return weight * (F.relu(length + self.delta) / length).to(weight.dtype)


@register_method(
    "svdiff",
    families=("unet",),
    reference="Han et al. ICCV 2023, SVDiff, arXiv:2303.11305 (mkshing/svdiff-pytorch)",
    knob_docs={"lr_1d_scale": "the learning rate of the norms' shifts, as a fraction of the trial's (the "
                              "reference: 1e-6 / 1e-3)"},
)
def svdiff(model: nn.Module, info: BackboneInfo, lr_1d_scale: float = 1e-3) -> nn.Module:
    """Learned shifts of the singular values of every weight matrix (linear and convolutional) and of every norm
    layer's scale."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm | nn.LayerNorm) and m.weight is not None]
    for name, module in layers:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SpectralShift(module))
    for norm in norms:
        shift = NormScaleShift(norm.weight.device)
        setattr(shift.delta, LR_SCALE, lr_1d_scale)
        parametrize.register_parametrization(norm, "weight", shift, unsafe=True)
    return model
