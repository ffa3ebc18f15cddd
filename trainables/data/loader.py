"""Batches straight from the memory-mapped image cache, augmented per sample on the training device.

No DataLoader workers: a trial usually owns one or two CPU cores, and images are already decoded and resized,
so gathering rows + one batched random-resized-crop/flip (affine grid sampling) is all the per-step data work.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from trainables.data.prepare import ImageSplit

# Seeds of the loader's two random streams, per (seed, epoch): distinct primes, so that the shuffle of one epoch
# and the augmentation of another never draw the same numbers. Changing them changes every trial's batches.
SHUFFLE_SEED_STRIDE = 100_003
AUGMENT_SEED_STRIDE = 7_919
# A training batch shorter than this joins the one before it (Batches' `min_last`): BatchNorm in train mode cannot
# normalise a batch of one image whose feature maps are 1x1. The classification loop and the cost model's count of
# optimizer steps both use it.
TRAIN_MIN_LAST = 2


def batch_bounds(n: int, batch_size: int, drop_last: bool = False, min_last: int = 1) -> list[int]:
    """Where each of the batches over `n` images starts and, last, where the last one ends (see Batches)."""
    starts = list(range(0, n, batch_size))
    if drop_last and n % batch_size:
        starts.pop()
    elif len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()  # the short last batch joins the previous one
    end = starts[-1] + batch_size if drop_last and starts else n
    return [*starts, min(end, n)]


def batch_count(images: int, batch_size: int, min_last: int = 1, world_size: int = 1) -> int:
    """Batches (optimizer steps) one worker runs in one pass over `images` training images: each worker's shard is
    padded to ceil(images / world_size), as Batches pads it while training."""
    shard = -(-images // world_size)
    return len(batch_bounds(shard, batch_size, min_last=min_last)) - 1


def passes_per_epoch(batches_per_pass: int, min_steps: int) -> int:
    """Whole passes over the training set an epoch makes so that it has at least `min_steps` optimizer steps
    (`min_steps_per_epoch`): ceil(min_steps / batches_per_pass), at least one (also for an empty training set,
    which no number of passes gives steps)."""
    if batches_per_pass < 1:
        return 1
    return max(1, math.ceil(min_steps / batches_per_pass))


class Batches:
    """One pass over a split: normalised float batches (B, 3, H, W) and labels.

    Shuffling and augmentation depend only on (seed, epoch): set `epoch` before iterating, and a resumed trial
    sees exactly the batches an uninterrupted one would. `rank`/`world_size` give each DDP worker its own interleaved shard of the same seeded permutation, padded
    so every worker runs the same number of steps.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
        min_last: int = 1,
    ) -> None:
        self.split, self.batch_size, self.device = split, batch_size, torch.device(device)
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.rank, self.world_size, self.drop_last, self.pad = rank, world_size, drop_last, pad
        # A last batch smaller than this joins the one before it: BatchNorm in train mode cannot normalise a
        # batch of one image whose feature maps are 1x1 (545 BreastMNIST images in batches of 32 leave one).
        self.min_last = min_last
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.epoch = 0

    def indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * SHUFFLE_SEED_STRIDE + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.pad:  # every rank the same number of steps (DDP needs it while training)
                order = torch.cat([order, order[: -(-n // self.world_size) * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order

    def _starts(self, n: int) -> list[int]:
        """Where each batch starts (and, last, where the last one ends)."""
        return batch_bounds(n, self.batch_size, self.drop_last, self.min_last)

    def __len__(self) -> int:
        n = len(self.indices()) if self.world_size > 1 else len(self.split)
        return len(self._starts(n)) - 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        generator = torch.Generator(device=self.device).manual_seed(self.seed * AUGMENT_SEED_STRIDE + self.epoch)
        bounds = self._starts(len(order))
        for start, stop in itertools.pairwise(bounds):
            idx = order[start:stop]
            x = self.split.batch(idx.numpy()).to(self.device, non_blocking=True).float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if self.augment:
                x = random_resized_crop_flip(x, generator)
            yield (x - self.mean) / self.std, self.split.labels[idx].to(self.device, non_blocking=True)


def random_resized_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per-sample RandomResizedCrop + horizontal flip at the input resolution, as one affine grid sample."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, device=x.device, generator=generator) * (high - low) + low

    area = uniform(*scale)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = uniform(-1, 1) * (1 - w)
    cy = uniform(-1, 1) * (1 - h)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
