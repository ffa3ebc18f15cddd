"""FacT: the weight updates of all ViT blocks, viewed as one tensor and factorised with factors shared across
layers. Jie & Deng AAAI 2023, arXiv:2212.03145.

Every block's qkv (3 slots), proj (1), fc1 and fc2 (mlp_ratio each, 4 in ViT-B) are cut into d x d slots; slot
i's update is
U^T Sigma_i V^T with U, V shared by all slots. Tensor-train (`fact_tt`): each Sigma_i is its own r x r matrix.
Tucker (`fact_tk`): Sigma_i = C x_3 P[:, i] with one r x r x r core C and an r-vector per slot.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbones import BackboneInfo
from trainables.methods.registry import register_method
from trainables.methods.vit_parts import embed_dim, vit_blocks

KNOBS = {"rank": "r of the shared factors", "scale": "fixed factor on the update", "dropout": "in the low-rank path"}


class FacTShared(nn.Module):
    def __init__(self, dim: int, rank: int, slots: int, tucker: bool, dropout: float) -> None:
        super().__init__()
        self.u = nn.Linear(dim, rank, bias=False)
        self.v = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.v.weight)  # the update starts at zero
        self.dropout = nn.Dropout(dropout)
        if tucker:
            self.core = nn.Parameter(torch.empty(rank, rank, rank))
            self.factors = nn.Parameter(torch.empty(rank, slots))
            nn.init.xavier_uniform_(self.core)
            nn.init.xavier_uniform_(self.factors)


class FacTLinear(nn.Module):
    """A frozen Linear plus its slots of the factorised update."""

    def __init__(self, base: nn.Linear, shared: FacTShared, kind: str, slots: list[int], rank: int, tucker: bool,
                 scale: float) -> None:
        super().__init__()
        self.base, self.kind, self.scale, self.slots = base, kind, scale, slots
        self._shared = [shared]  # a plain list: the shared factors are registered once, on the model
        if not tucker:
            cores = torch.empty(len(self.slots), rank, rank)
            for core in cores:
                nn.init.kaiming_uniform_(core, a=5**0.5)
            self.cores = nn.Parameter(cores)

    def sigmas(self) -> torch.Tensor:
        if hasattr(self, "cores"):
            return self.cores
        shared = self._shared[0]
        return torch.einsum("abc,cs->sab", shared.core, shared.factors[:, self.slots])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared, sigmas = self._shared[0], self.sigmas()
        if self.kind == "fc2":  # input = slots of width d, output d
            h = shared.u(x.unflatten(-1, (len(self.slots), -1)))  # (..., slots, r)
            delta = shared.v(shared.dropout(torch.einsum("...sr,sqr->...q", h, sigmas)))
        else:  # output = slots of width d
            h = torch.einsum("...r,sqr->...sq", shared.u(x), sigmas)
            delta = shared.v(shared.dropout(h)).flatten(-2)
        return self.base(x) + delta * self.scale


def slots_per_block(model: nn.Module) -> dict[str, int]:
    dim, hidden = embed_dim(model), vit_blocks(model)[0].mlp.fc1.out_features
    if hidden % dim:
        raise ValueError(f"MLP width {hidden} is not a multiple of the embedding width {dim}")
    return {"qkv": 3, "proj": 1, "fc1": hidden // dim, "fc2": hidden // dim}


def _fact(model: nn.Module, rank: int, scale: float, dropout: float, tucker: bool) -> nn.Module:
    blocks = vit_blocks(model)
    slots = slots_per_block(model)
    device = next(blocks[0].parameters()).device
    shared = FacTShared(embed_dim(model), rank, sum(slots.values()) * len(blocks), tucker, dropout).to(device)
    model.fact = shared
    first = 0
    for block in blocks:
        for owner, attr in ((block.attn, "qkv"), (block.attn, "proj"), (block.mlp, "fc1"), (block.mlp, "fc2")):
            own = list(range(first, first + slots[attr]))
            setattr(owner, attr, FacTLinear(getattr(owner, attr), shared, attr, own, rank, tucker, scale).to(device))
            first += slots[attr]
    return model


@register_method("fact_tt", families=("vit",), reference="Jie & Deng AAAI 2023, FacT (tensor-train), arXiv:2212.03145",
                 knob_docs=KNOBS)
def fact_tt(model: nn.Module, info: BackboneInfo, rank: int = 8, scale: float = 1.0, dropout: float = 0.1) -> nn.Module:
    """Factor-tuning with a tensor-train factorisation: shared U, V and an r x r core per weight slot."""
    return _fact(model, rank, scale, dropout, tucker=False)


@register_method("fact_tk", families=("vit",), reference="Jie & Deng AAAI 2023, FacT (Tucker), arXiv:2212.03145",
                 knob_docs=KNOBS)
def fact_tk(model: nn.Module, info: BackboneInfo, rank: int = 16, scale: float = 1.0, dropout: float = 0.1) -> nn.Module:
    """Factor-tuning with a Tucker factorisation: shared U, V, an r x r x r core, and an r-vector per slot."""
    return _fact(model, rank, scale, dropout, tucker=True)
