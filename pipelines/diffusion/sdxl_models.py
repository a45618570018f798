"""SDXL's weights: load them once per configuration and keep them in the one cache.

`load_sdxl` reads a local diffusers folder or the hub cache (downloads go through
`pipelines.downloads`, never from here), applies the speed options (`pipelines.diffusion.acceleration`) and
hands back a frozen `SDXLComponents`, the same object for the same configuration while it stays in
the cache. The stages that run SDXL (`blending`, `erasure`, `fast`) take the components as an
argument, so tests hand in a tiny SDXL loaded through these same functions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pipelines.diffusion.acceleration import SpeedOptions, apply_speed, plan_speed, vae_dtype
from pipelines.settings import Settings


@dataclass(frozen=True)
class SDXLComponents:
    """The parts of SDXL the loop uses. Frozen: to swap the text encoders for erased ones, make a
    copy with `erasure.with_erased_encoders`, which keeps the originals for SLD's concept."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL  # float32 (or bfloat16, BACKDROP_VAE_BF16) where float16 would overflow (force_upcast)
    text_encoder: CLIPTextModel  # CLIP ViT-L: penultimate hidden states
    text_encoder_2: CLIPTextModelWithProjection  # OpenCLIP bigG: penultimate states + pooled projection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer  # pads with "!"
    scheduler_config: dict  # the model's scheduler config; a fresh scheduler is built per candidate
    model_id: str  # hub id or local folder it came from
    device: str  # where the models run ("cuda", "cuda:1", "cpu", ...)
    dtype: torch.dtype  # UNet and text encoders (float16 on CUDA, float32 on CPU)
    cpu_offload: bool = False  # models wait on the CPU and move to `device` only while they run
    force_zeros_for_empty_prompt: bool = True  # model_index.json: an empty negative prompt is zeros
    vae_tiling: bool = False  # the VAE encodes and decodes large images tile by tile
    speed: tuple[str, ...] = ()  # the speed options applied (acceleration.apply_speed), for logs and status
    # With erased encoders swapped in (`erasure.with_erased_encoders`): the original ones, which
    # encode SLD's concept (the erased ones map it to noise). None: the encoders above are the originals.
    original_text_encoder: CLIPTextModel | None = None
    original_text_encoder_2: CLIPTextModelWithProjection | None = None


_CACHE: OrderedDict[tuple, SDXLComponents] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2  # SDXL is about 7 GB in float16: keep at most two configurations loaded


def load_sdxl(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
              cpu_offload: bool = False, vae_tiling: bool = False,
              speed: SpeedOptions = SpeedOptions()) -> SDXLComponents:
    """Load SDXL's components from a hub id or a local diffusers folder, cached per configuration.

    Args:
        model: a Hugging Face model id or a folder in diffusers' layout (model_index.json, unet/, vae/,
            text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/).
        device: where the models run.
        dtype: dtype of the UNet and the text encoders. With float16, a VAE whose config says
            `force_upcast` (SDXL's does) is kept in float32, since it overflows in float16.
        cpu_offload: keep the models on the CPU and move each to `device` only while it runs (for GPUs
            of about 12 GB). Ignored when `device` is the CPU. The models move while an edit runs,
            so edits on offloaded components must not overlap (the page runs one at a time).
        vae_tiling: let the VAE work tile by tile on large images.
        speed: attention kernels, memory layout, fused projections, VAE precision and torch.compile
            (`acceleration.SpeedOptions`); what cannot run on `device` is left out with a log line.

    Returns:
        The components; the same object for the same arguments while it stays in the cache.

    Raises:
        FileNotFoundError: the weights are neither in the folder nor in the local hub cache (one line
            saying what to download and where).
    """
    offload = bool(cpu_offload) and torch.device(device).type != "cpu"
    key = (str(model), str(device), dtype, offload, bool(vae_tiling), speed)
    with _CACHE_LOCK:  # one load at a time: two concurrent SDXL loads would need twice the memory
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        components = _load_uncached(str(model), str(device), dtype, offload, bool(vae_tiling), speed)
        _CACHE[key] = components
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return components


def load_sdxl_from_settings(settings: Settings) -> SDXLComponents:
    """`load_sdxl` with the model (its local copy, `downloads.sdxl_folder`), device, dtype, offload,
    tiling and speed options from the settings."""
    from pipelines.downloads import sdxl_folder

    device = settings.resolve_device()
    folder = sdxl_folder(settings)  # the local copy: load_sdxl never asks the hub itself
    return load_sdxl(str(folder), device, settings.resolve_dtype(device),
                     cpu_offload=settings.cpu_offload, vae_tiling=settings.vae_tiling,
                     speed=SpeedOptions.from_settings(settings))


def sdxl_status(settings: Settings) -> str:
    """One line for the page about where SDXL will run. Loads nothing."""
    device = settings.resolve_device()
    dtype = str(settings.resolve_dtype(device)).removeprefix("torch.")
    if torch.device(device).type == "cpu":
        return f"SDXL on cpu ({dtype}): slow, a GPU is recommended"
    return f"SDXL on {device} ({dtype})" + (", CPU offload" if settings.cpu_offload else "")


def _load_uncached(model: str, device: str, dtype: torch.dtype, cpu_offload: bool,
                   vae_tiling: bool, speed: SpeedOptions) -> SDXLComponents:
    from pipelines.downloads import weights_variant

    variant = weights_variant(model)  # "fp16" for a folder that `download sdxl` fetched
    try:
        index = DiffusionPipeline.load_config(model)
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, variant=variant)
        # SDXL's VAE overflows in float16 (diffusers' `force_upcast`): then it stays float32 (or
        # bfloat16, which has float32's range) and latents are cast on the way in and out.
        vae_upcast = bool(dtype == torch.float16
                          and AutoencoderKL.load_config(model, subfolder="vae").get("force_upcast"))
        plan = plan_speed(speed, device, vae_upcast, cpu_offload)
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=vae_dtype(plan, dtype, vae_upcast),
                                            variant=variant)
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype, variant=variant)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", dtype=dtype,
                                                                     variant=variant)
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2")
        scheduler_config = dict(EulerDiscreteScheduler.load_config(model, subfolder="scheduler"))
    except OSError as err:  # diffusers and transformers raise OSError (EnvironmentError) for missing files
        raise FileNotFoundError(_missing_weights_message(model)) from err

    if vae_tiling:
        vae.enable_tiling()
    modules = (unet, vae, text_encoder, text_encoder_2)
    for module in modules:
        module.eval().requires_grad_(False)
        if not cpu_offload:
            module.to(device)
    applied = apply_speed(unet, vae, plan)
    return SDXLComponents(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler_config=scheduler_config,
        model_id=model, device=device, dtype=dtype, cpu_offload=cpu_offload,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
        vae_tiling=vae_tiling, speed=applied,
    )


def _missing_weights_message(model: str) -> str:
    if Path(model).expanduser().exists():
        default_id = Settings.__dataclass_fields__["sdxl_model"].default
        return (f"SDXL weights not found in {model}: it must be a diffusers folder (model_index.json, unet/, "
                f"vae/, text_encoder*/, tokenizer*/, scheduler/), e.g. from "
                f"`huggingface-cli download {default_id} --local-dir {model}`")
    return (f"SDXL weights not found for {model}: run once online, or `huggingface-cli download {model} "
            f"--local-dir DIR` and set BACKDROP_SDXL_MODEL=DIR")
