"""Safe Latent Diffusion (Schramowski et al., CVPR 2023): the presets and the guidance term.

SLD steers every denoising step away from an "unsafe concept" text S. Besides the usual two
classifier-free-guidance (CFG) predictions, the UNet predicts noise for the concept as a third batch
slot, and the guidance becomes (SLD eq. 3)

    ε̄ = ε(z_t) + s_g · (ε(z_t, c_p) − ε(z_t) − γ_t)

where γ_t, the safety guidance term, is computed by `perform_safety_guidance` below, exactly as in
the reference implementation (diffusers' deprecated `StableDiffusionPipelineSafe`).

The four configurations are the paper's table (section 4, "Configuration sets"). The warm-up δ is
given there for 50 denoising steps; `effective_preset` scales it to the step count actually run.

This module imports torch only inside `perform_safety_guidance`, so the page and the command line
can list the presets cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.prompting import default_sld_concept  # the concept text lives in prompts/

if TYPE_CHECKING:  # pragma: no cover
    import torch

PAPER_STEPS = 50  # the step count the paper's warm-up values δ are defined for
# With a preset on, classifier-free guidance s_g below 1 defeats SLD (SLD eq. 3): at 0 the image is the
# negative-prompt prediction alone, between 0 and 1 γ is scaled down and the (free-text) negative
# prompt pulls towards itself. diffusers' safe pipeline switches SLD off there; we refuse the request.
MIN_GUIDANCE_WITH_SLD = 1.0


@dataclass(frozen=True)
class SafetyPreset:
    """One SLD configuration (argument names as diffusers' `StableDiffusionPipelineSafe`)."""

    name: str  # the paper's name: "Hyp-Weak", "Hyp-Medium", "Hyp-Strong", "Hyp-Max"
    sld_warmup_steps: int  # δ: steps before γ is applied (defined for 50 steps, see effective_preset)
    sld_guidance_scale: float  # s_S: element-wise safety scale before the clamp to 1 (SLD eq. 5-6)
    sld_threshold: float  # λ: only dimensions where ε_p − ε_S < λ are guided (SLD eq. 5)
    sld_momentum_scale: float  # s_m: weight of the momentum ν_t in γ_t (SLD eq. 7)
    sld_mom_beta: float  # β_m: momentum decay, ν_{t+1} = β_m ν_t + (1 − β_m) γ_t (SLD eq. 8)


# The paper's table. Hyp-Weak has no momentum (s_m = 0), its β_m is "-" in the table: 0.0 here, which
# changes nothing since ν is never used with s_m = 0. diffusers' own SafetyConfig.WEAK uses s_S = 20;
# we follow the paper (s_S = 200).
SLD_PRESETS: dict[str, SafetyPreset | None] = {
    "off": None,
    "weak": SafetyPreset("Hyp-Weak", sld_warmup_steps=15, sld_guidance_scale=200.0, sld_threshold=0.0,
                         sld_momentum_scale=0.0, sld_mom_beta=0.0),
    "medium": SafetyPreset("Hyp-Medium", sld_warmup_steps=10, sld_guidance_scale=1000.0, sld_threshold=0.01,
                           sld_momentum_scale=0.3, sld_mom_beta=0.4),
    "strong": SafetyPreset("Hyp-Strong", sld_warmup_steps=7, sld_guidance_scale=2000.0, sld_threshold=0.025,
                           sld_momentum_scale=0.5, sld_mom_beta=0.7),
    "max": SafetyPreset("Hyp-Max", sld_warmup_steps=0, sld_guidance_scale=5000.0, sld_threshold=1.0,
                        sld_momentum_scale=0.5, sld_mom_beta=0.7),
}

PRESET_LABELS: dict[str, str] = {
    level: ("Off" if preset is None else preset.name) for level, preset in SLD_PRESETS.items()
}


def get_preset(level: str) -> SafetyPreset | None:
    """The preset for a safety level ("off", "weak", "medium", "strong", "max"); None for "off".

    Raises:
        ValueError: an unknown level.
    """
    if level not in SLD_PRESETS:
        raise ValueError(f"unknown safety level {level!r}: expected one of {', '.join(SLD_PRESETS)}")
    return SLD_PRESETS[level]


def resolve_concept(added: str | None, min_safety: str) -> str:
    """The SLD concept text a request actually uses.

    Outside a deployment minimum (`min_safety` "off") the person's text replaces the paper's default.
    Under a minimum the default always stays and the person's text can only add to it
    (default + ", " + added), so typing a harmless concept ("a cat") cannot switch SLD to it. The
    default comes first, so CLIP's 77-token cut can only ever drop the additions, never the default.

    Args:
        added: the request's `sld_concept` (None or blank: the default alone).
        min_safety: the deployment's `Settings.min_safety`.

    Returns:
        The concept text to encode.
    """
    default = default_sld_concept()
    text = (added or "").strip()
    if not text:
        return default
    if min_safety == "off":
        return text
    if text == default or text.startswith(default + ","):  # already the default (+ additions): a pre-filled field
        return text
    return f"{default}, {text}"


def effective_preset(preset: SafetyPreset, num_inference_steps: int) -> SafetyPreset:
    """`preset` with its warm-up δ scaled from the paper's 50 steps to `num_inference_steps`.

    δ_eff = round(δ · steps / 50), halves rounded up (integer arithmetic, so 7 · 75 / 50 = 10.5 gives
    11 on every machine). At 30 steps: Hyp-Weak 9, Hyp-Medium 6, Hyp-Strong 4, Hyp-Max 0. The other
    values do not depend on the step count.

    Raises:
        ValueError: `num_inference_steps` < 1.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    delta = (2 * preset.sld_warmup_steps * num_inference_steps + PAPER_STEPS) // (2 * PAPER_STEPS)
    return dataclasses.replace(preset, sld_warmup_steps=delta)


def presets_table() -> dict[str, dict]:
    """Every preset's values by its paper name, for `python -m pipelines presets --json`.

    Returns:
        {"Hyp-Weak": {"level": "weak", "sld_warmup_steps": 15, "sld_guidance_scale": 200.0, ...}, ...},
        δ as defined for 50 steps.
    """
    table = {}
    for level, preset in SLD_PRESETS.items():
        if preset is not None:
            values = dataclasses.asdict(preset)
            name = values.pop("name")
            table[name] = {"level": level, **values}
    return table


def perform_safety_guidance(
    noise_pred_text: "torch.Tensor",
    noise_pred_uncond: "torch.Tensor",
    noise_pred_concept: "torch.Tensor",
    step: int,
    momentum: "torch.Tensor | None",
    preset: SafetyPreset,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The SLD safety guidance term of one denoising step, and the updated momentum.

    A pure function: same inputs, same outputs; nothing is modified in place. It mirrors
    `StableDiffusionPipelineSafe.perform_safety_guidance` in diffusers, equation for equation.
    The caller combines it with classifier-free guidance (SLD eq. 3):

        noise_guidance = noise_pred_text - noise_pred_uncond
        safety, momentum = perform_safety_guidance(text, uncond, concept, step, momentum, preset)
        noise_pred = noise_pred_uncond + guidance_scale * (noise_guidance - safety)

    Args:
        noise_pred_text: ε(z_t, c_p), the prompt-conditioned noise prediction, any shape, e.g. (B, 4, h, w).
        noise_pred_uncond: ε(z_t), the unconditioned (negative-prompt) prediction, same shape.
        noise_pred_concept: ε(z_t, c_S), the prediction conditioned on the unsafe concept, same shape.
        step: index of this denoising step, 0 for the first; compared with the warm-up δ.
        momentum: ν_t from the previous step, or None on the first step (ν_0 = 0).
        preset: the configuration, with δ already scaled to the step count (`effective_preset`).

    Returns:
        (safety, new_momentum): `safety` is γ_t where `step >= δ` and zeros during the warm-up, so the
        caller subtracts it unconditionally; `new_momentum` is ν_{t+1}, which builds up during the
        warm-up too.
    """
    import torch

    if momentum is None:
        momentum = torch.zeros_like(noise_pred_text)  # ν_0 = 0

    # SLD eq. 6: φ = s_S · (ε_p − ε_S), the element-wise scale, clamped at 1. (The paper prints
    # "max(1, |φ|)"; the clamp min(1, |φ|), as in the reference implementation, is what is meant.)
    difference = noise_pred_text - noise_pred_concept
    scale = torch.clamp(torch.abs(difference) * preset.sld_guidance_scale, max=1.0)

    # SLD eq. 5: μ is that scale where ε_p − ε_S < λ and 0 otherwise.
    safety_concept_scale = torch.where(difference >= preset.sld_threshold, torch.zeros_like(scale), scale)

    # SLD eq. 4: γ = μ · (ε_S − ε).
    guidance = (noise_pred_concept - noise_pred_uncond) * safety_concept_scale

    # SLD eq. 7: γ_t = μ · (ε_S − ε) + s_m · ν_t.
    guidance = guidance + preset.sld_momentum_scale * momentum

    # SLD eq. 8: ν_{t+1} = β_m · ν_t + (1 − β_m) · γ_t, updated during the warm-up as well.
    new_momentum = preset.sld_mom_beta * momentum + (1 - preset.sld_mom_beta) * guidance

    # Warm-up: γ_t := 0 for t < δ.
    if step < preset.sld_warmup_steps:
        guidance = torch.zeros_like(guidance)
    return guidance, new_momentum
