"""Speed options for SDXL's modules: which attention kernels, memory layout, fused projections,
VAE precision and `torch.compile`, decided once per load and applied to the freshly loaded modules.

Each option is one setting (`settings.py`). `plan_speed` turns the settings into what will actually be
applied on a device, with a one-line note for everything asked for that cannot run there; nothing
fails because a GPU lacks a feature. `apply_speed` applies a plan to the modules; `blending.warm_up`
runs one tiny edit so that compilation (and CUDA's lazy set-up) is paid before the first person's edit.

    SDPA           PyTorch's fused `scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`, its
                   default since torch 2); "classic" is diffusers' `AttnProcessor` (plain matmuls).
    channels_last  NHWC weights for the convolutions (cuDNN's fast layout on tensor-core GPUs).
    fused QKV      one matmul for query, key and value (`fuse_qkv_projections`; SDPA only).
    VAE bfloat16   SDXL's VAE overflows in float16, so diffusers runs it in float32; bfloat16 has
                   float32's range and halves the decode's memory and time (ComfyUI's default on GPUs
                   that support it).
    torch.compile  the UNet's forward, compiled with Inductor; "reduce-overhead" adds CUDA graphs.
                   Each new input shape (working size, batch of 1/2/3 slots) compiles once per process.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections import Counter
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"  # tests use "eager" to run the compile path without a C++ build


@dataclass(frozen=True)
class SpeedOptions:
    """The speed settings as given (see `settings.py`): what was asked for, not yet what runs."""

    attention: str = "sdpa"  # "sdpa" or "classic"
    channels_last: str = "auto"  # auto (on CUDA), on, off
    fuse_qkv: str = "auto"  # auto (on CUDA), on, off
    vae_bf16: str = "auto"  # auto (CUDA with bf16, where fp16 would overflow), on, off
    compile: str = "off"  # off, default, reduce-overhead, max-autotune

    @classmethod
    def from_settings(cls, settings) -> "SpeedOptions":
        return cls(attention=settings.attention, channels_last=settings.channels_last,
                   fuse_qkv=settings.fuse_qkv, vae_bf16=settings.vae_bf16, compile=settings.compile)


@dataclass(frozen=True)
class SpeedPlan:
    """What `apply_speed` does on one device, and why anything asked for is left out."""

    sdpa: bool
    channels_last: bool
    fuse_qkv: bool
    vae_bf16: bool
    compile_mode: str | None  # None: not compiled
    notes: tuple[str, ...] = ()  # one line per option that was asked for but cannot run here


def plan_speed(options: SpeedOptions, device: str, vae_upcast: bool, cpu_offload: bool = False) -> SpeedPlan:
    """Decide which speed options run on `device`.

    Args:
        options: the settings.
        device: where the UNet runs ("cuda", "cuda:1", "cpu", "mps").
        vae_upcast: the VAE would be kept in float32 because float16 overflows (SDXL's `force_upcast`).
        cpu_offload: the models move between the CPU and the GPU during an edit.
    """
    cuda = torch.device(device).type == "cuda"
    notes: list[str] = []

    sdpa = options.attention == "sdpa"
    if sdpa and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        sdpa = False
        notes.append("SDPA needs torch 2: classic attention is used")

    channels_last = options.channels_last == "on" or (options.channels_last == "auto" and cuda)

    fuse_qkv = options.fuse_qkv == "on" or (options.fuse_qkv == "auto" and cuda)
    if fuse_qkv and not sdpa:
        fuse_qkv = False
        if options.fuse_qkv == "on":
            notes.append("fused QKV needs SDPA attention: left unfused")

    bf16_ok = torch.cuda.is_bf16_supported() if cuda else torch.device(device).type == "cpu"
    vae_bf16 = (options.vae_bf16 == "on" or (options.vae_bf16 == "auto" and cuda and vae_upcast)) and bf16_ok
    if options.vae_bf16 == "on" and not bf16_ok:
        notes.append(f"this device ({device}) has no bfloat16: the VAE stays in float32")

    compile_mode = None if options.compile == "off" else options.compile
    if compile_mode is not None:
        missing = _compile_missing(device)
        if missing:
            notes.append(f"torch.compile skipped: {missing}")
            compile_mode = None
        elif compile_mode == "reduce-overhead" and (not cuda or cpu_offload):
            # CUDA graphs need the weights to stay at one GPU address; offload moves them every edit.
            notes.append("CUDA graphs need a GPU without CPU offload: torch.compile mode 'default' is used")
            compile_mode = "default"
    return SpeedPlan(sdpa=sdpa, channels_last=channels_last, fuse_qkv=fuse_qkv, vae_bf16=vae_bf16,
                     compile_mode=compile_mode, notes=tuple(notes))


def _compile_missing(device: str) -> str:
    """Why Inductor cannot compile for `device` here ('' when it can)."""
    if COMPILE_BACKEND != "inductor":
        return ""
    kind = torch.device(device).type
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed"
        if torch.cuda.get_device_capability(torch.device(device)) < (7, 0):
            return "Triton needs a GPU of compute capability 7.0 or newer"
        return ""
    if kind == "cpu":
        return "" if (shutil.which("g++") or shutil.which("clang++") or shutil.which("cl")) else "no C++ compiler found"
    return f"not supported on {kind}"


def vae_dtype(plan: SpeedPlan, dtype: torch.dtype, vae_upcast: bool) -> torch.dtype:
    """The VAE's dtype: bfloat16 when the plan says so, float32 where float16 would overflow, else `dtype`."""
    if plan.vae_bf16:
        return torch.bfloat16
    return torch.float32 if vae_upcast else dtype


def apply_speed(unet: torch.nn.Module, vae: torch.nn.Module, plan: SpeedPlan) -> tuple[str, ...]:
    """Apply `plan` to the UNet and the VAE in place (call after moving them to their device).

    Returns:
        One short description per applied option, e.g. ("attention: AttnProcessor2_0 (SDPA)",
        "channels-last", "torch.compile (default)"), for logs and the page's status.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for module in (unet, vae):
        module.set_attn_processor(AttnProcessor2_0() if plan.sdpa else AttnProcessor())
        if plan.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
        if plan.channels_last:
            module.to(memory_format=torch.channels_last)
    applied = [f"attention: {attention_processors(unet)}"]
    if plan.channels_last:
        applied.append("channels-last")
    if plan.vae_bf16:
        applied.append("VAE bfloat16")
    if plan.compile_mode is not None:
        # Weights stay graph inputs (not constants), so fusing a Fast LoRA into them in place does
        # not recompile. A backend failure at the first call falls back to eager instead of failing.
        torch._dynamo.config.suppress_errors = True
        unet.compile(mode=plan.compile_mode, backend=COMPILE_BACKEND, dynamic=False)
        applied.append(f"torch.compile ({plan.compile_mode})")
    for note in plan.notes:
        logger.info("speed: %s", note)
    logger.info("SDXL speed options: %s", ", ".join(applied))
    return tuple(applied)


def attention_processors(module: torch.nn.Module) -> str:
    """The attention processors a model uses, e.g. "AttnProcessor2_0 (SDPA)" or "FusedAttnProcessor2_0
    (SDPA, fused QKV)"; several kinds are listed with their counts."""
    kinds = Counter(type(p).__name__ for p in module.attn_processors.values())
    names = []
    for name, count in sorted(kinds.items()):
        tags = (["SDPA"] if name.endswith("2_0") else []) + (["fused QKV"] if name.startswith("Fused") else [])
        label = f"{name} ({', '.join(tags)})" if tags else name
        names.append(label if len(kinds) == 1 else f"{label} x{count}")
    return ", ".join(names)
