"""The text-to-image training loop: PEFT of a latent-diffusion U-Net on image-caption pairs, top to bottom.

Written as a Ray Train style worker function against `current_session()`, like the classification loop.

data (captioned) -> U-Net + PEFT method, VAE and text encoder frozen -> latents and caption embeddings computed
once -> AdamW + warm-up/cosine -> resume -> for each epoch: epsilon-prediction loss with caption dropout (for
classifier-free guidance), then a deterministic validation denoising loss (fixed timesteps, fixed noise, held-out
pairs) that the sweep compares trials on -> after the last epoch, with the best-validation weights: images for a
fixed, seeded prompt set, FID and KID against held-out real images, a sample grid in MLflow.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.checkpoints import load_training_state, save_training_state
from trainables.config import TrialConfig
from trainables.contract import EPOCH, PEAK_MEM, SCORE, TEST_LOSS, TRAIN_LOSS, VAL_BEST_LOSS, Selection
from trainables.data import ImageSplit, SplitData, check_captions, load_splits
from trainables.data.manifest import default_cache_dir
from trainables.devices import ddp, device_for, peak_memory_mb
from trainables.diffusion_models import DiffusionParts, build_diffusion
from trainables.fid import feature_extractor, fid, kid
from trainables.methods import load_trainable_state, param_groups, prepare_model, trainable_state_dict
from trainables.session import current_session
from trainables.trial import Diverged, Trial, run_params, run_tags, warmup_cosine

# Trials are chosen on the validation denoising loss; FID of generated images is what gets reported.
SELECTION = Selection(VAL_BEST_LOSS, "test/fid", test_higher_is_better=False)

# The loop's random numbers come from generators seeded with fixed numbers only, so a rerun or a resumed trial
# draws exactly the same values:
# - epoch e's training draws (order, caption dropout, noise, timesteps): seed `seed * EPOCH_SEED_STRIDE + e`, a
#   prime stride far above any epoch count, so no two (seed, epoch) pairs share a generator seed;
EPOCH_SEED_STRIDE = 100_003
# - the noise of the validation (and test/loss) denoising loss: the same seed for every trial, whatever its own
#   seed, so all trials are scored on the same noise and their losses compare;
VALIDATION_NOISE_SEED = 1234
# - the initial latents of the images generated for FID: seed `seed * SAMPLE_SEED_STRIDE + i` for the chunk of
#   SAMPLE_CHUNK prompts starting at prompt i, so each trial seed gets its own, reproducible images (changing the
#   chunk size changes them).
SAMPLE_SEED_STRIDE = 7_919
SAMPLE_CHUNK = 16


class TextToImageTrain(BaseModel):
    """The `train:` section of a text-to-image sweep."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # captions replaced by "" so the model learns unconditioned
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"  # on GPUs (CPU runs fp32); trained params stay fp32
    gradient_checkpointing: bool = False
    val_timesteps: list[int] = Field(default_factory=lambda: [100, 300, 500, 700, 900])
    val_pairs: int = Field(64, ge=1)
    eval_prompts: int = Field(32, ge=2)  # test captions generated after the last epoch
    guidance_scale: float = Field(4.0, ge=1)
    sample_steps: int = Field(50, ge=1)
    fid_features: str = "auto"
    fid_real_images: int | None = Field(None, ge=2)  # real test images FID/KID compare against (None: all)
    kid_subset_size: int = Field(50, ge=2)
    grid_images: int = Field(16, ge=1)
    checkpoint_every: int = Field(1, ge=1)


@dataclass(frozen=True)
class Precision:
    """How the forward passes and the frozen weights run, decided once from `mixed_precision` and the device:
    with `enabled` (a CUDA device and mixed_precision bf16 or fp16) under autocast to `dtype`, with the frozen
    weights stored in `dtype`; otherwise in fp32 throughout. Trained parameters always stay fp32."""

    enabled: bool
    dtype: torch.dtype  # bfloat16 for "bf16", else float16 (not used unless enabled)

    @classmethod
    def of(cls, mixed_precision: str, device: torch.device) -> Precision:
        return cls(enabled=mixed_precision != "no" and device.type == "cuda",
                   dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)

    @property
    def scales_loss(self) -> bool:
        """Whether training needs a GradScaler: fp16 gradients underflow without one; bf16's do not."""
        return self.enabled and self.dtype == torch.float16

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)


@dataclass
class Progress:
    epoch: int = 0
    best: float = math.inf  # best validation denoising loss
    best_epoch: int = 0


@dataclass
class Encoded:
    """A split as the U-Net sees it: its VAE latents (scaled by the VAE's scaling factor), computed once (the VAE
    is frozen), and its captions as text; their embeddings come from `Embeddings`, which caches each one."""

    latents: torch.Tensor
    captions: list[str]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrialConfig.model_validate(config)
    train = TextToImageTrain.model_validate(cfg.train)
    session = current_session()
    rank, world = session.world_rank, session.world_size
    device = device_for(cfg.resources.gpus)
    torch.set_num_threads(max(1, int(cfg.resources.cpus)))
    precision = Precision.of(train.mixed_precision, device)

    # Data and the frozen parts: latents and caption embeddings once, not every step.
    data = load_splits(cfg.data, cfg.seed)
    if data.manifest is not None:  # the sweep checked already; a worker run by hand may not have
        check_captions(data.manifest, cfg.data.id or cfg.data.name)
    parts = build_diffusion(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.kwargs, device)
    if precision.enabled:
        parts.vae.to(precision.dtype)
        parts.text.model.to(precision.dtype)
    encoded = {"train": encode(parts, data.train, device), "val": encode(parts, data.val, device, limit=train.val_pairs)}
    embeddings = Embeddings(parts, device)

    # The U-Net and its PEFT method; frozen weights may drop to half precision, trained ones stay fp32.
    prepared = prepare_model(parts.unet, parts.info, cfg.method.name, cfg.method.knobs, cfg.method.bn_mode)
    unet = prepared.model.to(device)
    if precision.enabled:
        for param in unet.parameters():
            if not param.requires_grad:
                param.data = param.data.to(precision.dtype)
    if train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    net = ddp(unet, device) if world > 1 else unet
    optimizer = torch.optim.AdamW(param_groups(unet, train.lr, train.weight_decay))
    scaler = torch.amp.GradScaler(enabled=precision.scales_loss)
    per_rank = -(-len(encoded["train"].captions) // world)
    steps_per_epoch = -(-per_rank // train.batch_size)
    schedule = warmup_cosine(optimizer, int(train.warmup_epochs * steps_per_epoch), train.epochs * steps_per_epoch)

    trial = Trial(config, cfg, session, train.checkpoint_every)
    progress, best_state = Progress(), None
    with trial.latest_checkpoint() as checkpoint:
        if checkpoint is not None:
            progress, best_state = load_training_state(checkpoint, unet, optimizer, schedule, Progress)
    params = run_params(cfg, train, prepared, data.params, parts.info.weight_source, SELECTION,
                        text_encoder=parts.text.source)
    if not trial.start(params, run_tags(cfg, data.params), progress.epoch).trains:
        return  # an earlier attempt finished this trial; its results were reported again

    schedule_t = parts.noise_scheduler
    with trial.failures():
        for epoch in range(progress.epoch + 1, train.epochs + 1):
            started = time.perf_counter()
            unet.train()
            # Noise, timesteps, caption dropout and order depend on (seed, epoch) only: a resumed trial trains
            # exactly as an uninterrupted one.
            generator = torch.Generator().manual_seed(cfg.seed * EPOCH_SEED_STRIDE + epoch)
            order = torch.randperm(len(encoded["train"].captions), generator=generator)
            order = torch.cat([order, order[: per_rank * world - len(order)]])[rank::world]
            loss_sum, seen = 0.0, 0
            for start in range(0, len(order), train.batch_size):
                idx = order[start : start + train.batch_size]
                latents = encoded["train"].latents[idx].to(device)
                captions = ["" if torch.rand(1, generator=generator).item() < train.caption_dropout
                            else encoded["train"].captions[i] for i in idx.tolist()]
                noise = torch.randn(latents.shape, generator=generator).to(device)
                t = torch.randint(0, schedule_t.config.num_train_timesteps, (len(idx),), generator=generator).to(device)
                with precision.autocast(device):
                    prediction = net(schedule_t.add_noise(latents, noise, t), t,
                                     encoder_hidden_states=embeddings(captions)).sample
                    loss = F.mse_loss(prediction.float(), target(schedule_t, latents, noise, t).float())
                if not torch.isfinite(loss):
                    raise Diverged(f"training loss became {loss.item()} at epoch {epoch} (lr={train.lr:g})")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if train.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in unet.parameters() if p.requires_grad], train.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                loss_sum += loss.item() * len(idx)
                seen += len(idx)

            val_loss = validation_loss(unet, parts, encoded["val"], embeddings, train=train, device=device,
                                       precision=precision)
            if val_loss < progress.best:
                progress.best, progress.best_epoch = val_loss, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainable_state_dict(unet, "eval").items()}
            progress.epoch = epoch
            metrics = {
                EPOCH: epoch,
                TRAIN_LOSS: loss_sum / max(seen, 1),
                "val/loss": val_loss,
                VAL_BEST_LOSS: progress.best,
                SCORE: -progress.best,  # the sweep compares higher-is-better scores
                "best_epoch": progress.best_epoch,
                "lr": schedule.get_last_lr()[0],
                "time/epoch_s": time.perf_counter() - started,
                PEAK_MEM: peak_memory_mb(device),
            }
            last = epoch == train.epochs
            if last and rank == 0:  # with the best-validation weights: samples, FID, KID
                load_trainable_state(unet, best_state)
                metrics.update(evaluate(unet, parts, data, embeddings, train=train, cfg=cfg, trial=trial,
                                        device=device, precision=precision))
            trial.end_epoch(epoch, metrics, last, save=partial(
                save_training_state, model=unet, bn_mode="eval", optimizer=optimizer, schedule=schedule,
                progress=progress, best_state=best_state))


class Embeddings:
    """Caption embeddings from the frozen text encoder, each caption encoded once."""

    def __init__(self, parts: DiffusionParts, device: torch.device) -> None:
        self.parts, self.device, self.cache = parts, device, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self.cache})
        for start in range(0, len(new), 64):
            chunk = new[start : start + 64]
            for caption, emb in zip(chunk, self.parts.text(chunk, self.device).float(), strict=True):
                self.cache[caption] = emb
        return torch.stack([self.cache[c] for c in captions]).to(self.device)


@torch.no_grad()
def encode(parts: DiffusionParts, split: ImageSplit, device: torch.device, *, limit: int | None = None,
           batch: int = 32) -> Encoded:
    """The first `limit` images of the split (all by default) through the VAE, with their captions."""
    n = len(split) if limit is None else min(limit, len(split))
    latents = []
    dtype = next(parts.vae.parameters()).dtype
    for start in range(0, n, batch):
        x = split.batch(np.arange(start, min(start + batch, n))).float().to(device) / 127.5 - 1
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        latents.append(parts.vae.encode(x.to(dtype)).latent_dist.mean.float().cpu())
    scale = parts.vae.config.scaling_factor
    return Encoded(torch.cat(latents) * scale, list(split.captions[:n]))


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net predicts: the noise (epsilon), or the velocity for v-prediction models."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise


@torch.no_grad()
def validation_loss(unet: nn.Module, parts: DiffusionParts, val: Encoded, embeddings: Embeddings, *,
                    train: TextToImageTrain, device: torch.device, precision: Precision) -> float:
    """Denoising loss on the first `val_pairs` held-out pairs at fixed timesteps with fixed noise: the same
    numbers for every trial of a cell, so their losses compare."""
    unet.eval()
    n = min(train.val_pairs, len(val.captions))
    latents = val.latents[:n].to(device)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(VALIDATION_NOISE_SEED)).to(device)
    context = embeddings(val.captions[:n])
    total = 0.0
    for step in train.val_timesteps:
        t = torch.full((n,), min(step, parts.noise_scheduler.config.num_train_timesteps - 1), device=device)
        with precision.autocast(device):
            prediction = unet(parts.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
        total += F.mse_loss(prediction.float(), target(parts.noise_scheduler, latents, noise, t).float()).item()
    unet.train()
    return total / len(train.val_timesteps)


@torch.no_grad()
def generate(unet: nn.Module, parts: DiffusionParts, prompts: list[str], embeddings: Embeddings, *,
             train: TextToImageTrain, seed: int, latent_shape: tuple[int, ...], device: torch.device,
             precision: Precision) -> torch.Tensor:
    """Images for the prompts with classifier-free guidance and a DDIM sampler, seeded: uint8 (N, 3, H, W)."""
    from diffusers import DDIMScheduler

    unet.eval()
    sampler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    sampler.set_timesteps(train.sample_steps)
    images = []
    for start in range(0, len(prompts), SAMPLE_CHUNK):
        chunk = prompts[start : start + SAMPLE_CHUNK]
        generator = torch.Generator().manual_seed(seed * SAMPLE_SEED_STRIDE + start)
        latents = (torch.randn((len(chunk), *latent_shape), generator=generator) * sampler.init_noise_sigma).to(device)
        context = torch.cat([embeddings([""] * len(chunk)), embeddings(chunk)])
        for t in sampler.timesteps:
            with precision.autocast(device):
                noise = unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample.float()
            unconditional, conditional = noise.chunk(2)
            latents = sampler.step(unconditional + train.guidance_scale * (conditional - unconditional), t,
                                   latents).prev_sample
        vae_dtype = next(parts.vae.parameters()).dtype
        decoded = parts.vae.decode((latents / parts.vae.config.scaling_factor).to(vae_dtype)).sample.float()
        images.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    unet.train()
    return torch.cat(images)


def evaluate(unet: nn.Module, parts: DiffusionParts, data: SplitData, embeddings: Embeddings, *,
             train: TextToImageTrain, cfg: TrialConfig, trial: Trial, device: torch.device,
             precision: Precision) -> dict[str, float]:
    """Generated images for a fixed prompt set (the first test captions) against the held-out real test images:
    FID, KID, and a sample grid (with its prompts) logged to the run."""
    import torchvision

    encoded = encode(parts, data.test, device, limit=train.val_pairs)  # the pairs test/loss is measured on
    prompts = data.test.captions[: train.eval_prompts]
    fake = generate(unet, parts, prompts, embeddings, train=train, seed=cfg.seed,
                    latent_shape=tuple(encoded.latents.shape[1:]), device=device, precision=precision)
    n_real = min(train.fid_real_images or len(data.test), len(data.test))
    extractor = feature_extractor(train.fid_features, device)
    # The test split does not depend on the trial's fraction or seed: its features are shared by the whole sweep.
    real_key = f"{data.manifest.hash if data.manifest else cfg.data.name}|test|{n_real}|{cfg.data.image_size}"
    real_features = extractor.cached(lambda: data.test.batch(np.arange(n_real)), real_key,
                                     Path(cfg.data.cache_dir or default_cache_dir()))
    fake_features = extractor(fake)
    with tempfile.TemporaryDirectory() as tmp:
        grid = torchvision.utils.make_grid(fake[: train.grid_images].float() / 255, nrow=4)
        torchvision.utils.save_image(grid, Path(tmp) / "samples.png")
        (Path(tmp) / "prompts.txt").write_text("\n".join(prompts[: train.grid_images]) + "\n")
        for name in ("samples.png", "prompts.txt"):
            trial.run.log_artifact(str(Path(tmp) / name), "samples")
    trial.run.set_tags({"fid.features": extractor.name})
    return {
        "test/fid": fid(real_features, fake_features),
        "test/kid": kid(real_features, fake_features, subset_size=train.kid_subset_size),
        TEST_LOSS: validation_loss(unet, parts, encoded, embeddings, train=train, device=device,
                                     precision=precision),
        "test/generated": float(len(fake)),
    }
