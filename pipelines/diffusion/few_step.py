"""Fast presets: few-step LoRAs (SDXL-Lightning, Hyper-SD, LCM-LoRA) fused into the UNet, each with
the sampler, step count and guidance its model card asks for.

    preset = FAST_PRESETS["lightning-4step"]
    notices = use_fast(components, preset, settings.lora_dir)   # fuse (or keep) this LoRA
    blend(components, ..., num_inference_steps=preset.steps, guidance_scale=preset.guidance_scale,
          scheduler=preset.sampler)
    use_fast(components, None, settings.lora_dir)               # the original UNet, bit for bit

A LoRA adds low-rank deltas to the UNet's weights. Running it through PEFT's wrappers costs extra
matmuls per layer, so it is fused into the weights (diffusers' `fuse_lora`) and the wrappers are
removed again (`unload_lora`): the UNet keeps its module structure, and a compiled UNet does not
recompile. Unfusing by subtraction would not give the original weights back exactly in floating
point, so the original weights of every layer the LoRA touches are kept (on the CPU) and copied
back when switching presets or back to the standard sampler.

The guidance of every preset is >= 1: the model cards' "guidance 0" and guidance 1 both mean "no
classifier-free guidance" (one UNet batch slot), and SLD, which needs guidance >= 1, can still sit
on top (then the unconditional and concept slots run too).

Only the models are changed in place: the page runs one edit at a time on the shared UNet, and
`use_fast` is called at the start of every edit, so each edit gets the preset it asked for.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import FAST_PRESET_NAMES


@dataclass(frozen=True)
class FastPreset:
    """A few-step LoRA and how to sample with it."""

    name: str  # the key in FAST_PRESETS, what EditRequest.fast and --fast take
    label: str  # for the page
    repo: str  # Hugging Face repository of the LoRA file
    filename: str  # the file in the repository (and in the LoRA folder, for offline use)
    sampler: str  # blending.FEW_STEP_SAMPLERS
    steps: int  # the step count the LoRA was distilled for
    guidance_scale: float  # >= 1; 1 runs no unconditional pass
    lora_scale: float = 1.0


FAST_PRESETS: dict[str, FastPreset] = {
    preset.name: preset for preset in (
        # SDXL-Lightning (ByteDance): Euler with trailing timesteps, no CFG.
        FastPreset("lightning-4step", "SDXL-Lightning, 4 steps", "ByteDance/SDXL-Lightning",
                   "sdxl_lightning_4step_lora.safetensors", "euler_trailing", 4, 1.0),
        FastPreset("lightning-8step", "SDXL-Lightning, 8 steps", "ByteDance/SDXL-Lightning",
                   "sdxl_lightning_8step_lora.safetensors", "euler_trailing", 8, 1.0),
        # Hyper-SD (ByteDance): DDIM with trailing timesteps; the CFG-preserving LoRA keeps the
        # negative prompt working at guidance 5-8.
        FastPreset("hyper-4step", "Hyper-SD, 4 steps", "ByteDance/Hyper-SD",
                   "Hyper-SDXL-4steps-lora.safetensors", "ddim_trailing", 4, 1.0),
        FastPreset("hyper-8step-cfg", "Hyper-SD, 8 steps with guidance", "ByteDance/Hyper-SD",
                   "Hyper-SDXL-8steps-CFG-lora.safetensors", "ddim_trailing", 8, 5.0),
        # LCM-LoRA (latent-consistency): LCMScheduler, guidance 1 (up to 2 works).
        FastPreset("lcm-4step", "LCM-LoRA, 4 steps", "latent-consistency/lcm-lora-sdxl",
                   "pytorch_lora_weights.safetensors", "lcm", 4, 1.0),
    )
}

assert tuple(FAST_PRESETS) == FAST_PRESET_NAMES, "settings.FAST_PRESET_NAMES and the presets disagree"


def get_fast_preset(name: str) -> FastPreset:
    """The preset called `name`, or a one-line ValueError listing the names."""
    if name not in FAST_PRESETS:
        raise ValueError(f"unknown fast preset {name!r} (choose {', '.join(FAST_PRESETS)})")
    return FAST_PRESETS[name]


def lora_file(preset: FastPreset, lora_dir: Path) -> Path:
    """Where the preset's LoRA file is: `lora_dir/<filename>`, else the Hugging Face cache, else downloaded.

    Raises:
        FileNotFoundError: not in the folder nor the cache, and the hub cannot be reached (one line).
    """
    local = Path(lora_dir) / preset.filename
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(preset.repo, preset.filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and kin): try the hub once
        pass
    try:
        return Path(hf_hub_download(preset.repo, preset.filename))
    except Exception as err:  # noqa: BLE001 - offline, no such file, hub down: one line saying what to fetch
        raise FileNotFoundError(
            f"the {preset.name} LoRA ({preset.repo}/{preset.filename}) is not here and could not be "
            f"downloaded: put the file in {lora_dir}/") from err


# ------------------------------------------------------------------------------------------------
# Fusing into the UNet, and back
# ------------------------------------------------------------------------------------------------


@dataclass
class _Fused:
    """What is fused into one UNet now: the preset's name and the original weights it replaced."""

    name: str
    originals: list  # (module, {"weight": tensor, "bias": tensor or None}) on the CPU


_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # UNet -> _Fused
_LOCK = threading.Lock()


def use_fast(components, preset: FastPreset | None, lora_dir: Path) -> list[str]:
    """Make the UNet of `components` run `preset`'s LoRA, or the original weights for None.

    Does nothing when the UNet already runs what is asked. Otherwise restores the original weights
    (exactly) and fuses the new LoRA.

    Returns:
        Notices for the person (e.g. parts of the file that were not used).
    """
    unet = components.unet
    with _LOCK:
        fused = _FUSED.get(unet)
        if fused is not None and preset is not None and fused.name == preset.name:
            return []
        if fused is not None:
            _restore(unet, fused)
            del _FUSED[unet]
        if preset is None:
            return []
        path = lora_file(preset, lora_dir)
        originals, notices = fuse_lora_file(unet, path, preset.lora_scale)
        _FUSED[unet] = _Fused(preset.name, originals)
        return notices


def fused_preset(unet) -> str | None:
    """The name of the preset fused into `unet`, or None."""
    fused = _FUSED.get(unet)
    return None if fused is None else fused.name


def fuse_lora_file(unet, path: Path, lora_scale: float = 1.0, adapter_name: str = "fast") -> tuple[list, list[str]]:
    """Fuse the UNet part of an SDXL LoRA file (diffusers or Kohya format) into `unet`'s weights.

    Returns:
        (originals, notices): the original weights of every layer the LoRA changed, for `_restore`;
        and notices (text-encoder parts of the file are not used: the prompt is encoded as usual).
    """
    import torch
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin as SDXLLoras
    from peft.tuners.tuners_utils import BaseTunerLayer

    state_dict, network_alphas, metadata = SDXLLoras.lora_state_dict(
        str(path), unet_config=unet.config, return_lora_metadata=True)
    unet_keys = [key for key in state_dict if key.startswith("unet.")]
    if not unet_keys:
        raise ValueError(f"{Path(path).name} has no UNet LoRA weights")
    notices = []
    if len(unet_keys) < len(state_dict):
        notices.append(f"{Path(path).name}: its text-encoder LoRA weights are not used")
    SDXLLoras.load_lora_into_unet(state_dict, network_alphas, unet=unet, adapter_name=adapter_name,
                                  metadata=metadata)
    originals = []
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
                saved = {"weight": base.weight.detach().to("cpu", copy=True),
                         "bias": None if base.bias is None else base.bias.detach().to("cpu", copy=True)}
                originals.append((base, saved))
        unet.fuse_lora(lora_scale=lora_scale, adapter_names=[adapter_name])
        unet.unload_lora()  # PEFT's wrappers out again; the fused weights stay in the base layers
        _refresh_fused_projections(unet)
    return originals, notices


def _restore(unet, fused: _Fused) -> None:
    """Copy the original weights back in place (same tensors: a compiled UNet need not recompile)."""
    import torch

    with torch.no_grad():
        for base, saved in fused.originals:
            base.weight.copy_(saved["weight"])
            if saved["bias"] is not None:
                base.bias.copy_(saved["bias"])
        _refresh_fused_projections(unet)


def _refresh_fused_projections(unet) -> None:
    """With fused QKV (acceleration), the fused layer holds copies of the query/key/value weights:
    rebuild them in place from the (changed) separate projections."""
    import torch
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if not isinstance(module, Attention):
            continue
        parts = None
        if getattr(module, "to_qkv", None) is not None:
            fused_layer, parts = module.to_qkv, (module.to_q, module.to_k, module.to_v)
        elif getattr(module, "to_kv", None) is not None:
            fused_layer, parts = module.to_kv, (module.to_k, module.to_v)
        if parts is None:
            continue
        fused_layer.weight.copy_(torch.cat([part.weight for part in parts]))
        if fused_layer.bias is not None:
            fused_layer.bias.copy_(torch.cat([part.bias for part in parts]))
