"""SLD presets and the safety guidance function, against the paper's table and an independent
re-implementation (numpy, element by element as the equations read), and against diffusers' own
`StableDiffusionPipelineSafe.perform_safety_guidance`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.diffusion.safety import (
    PRESET_LABELS,
    SLD_PRESETS,
    SafetyPreset,
    default_sld_concept,
    effective_preset,
    get_preset,
    perform_safety_guidance,
    presets_table,
)

ROOT = Path(__file__).resolve().parent.parent

# The paper's table (section 4, "Configuration sets"): δ, s_S, λ, s_m, β_m ("-" for Hyp-Weak: 0.0).
PAPER = {
    "weak": ("Hyp-Weak", 15, 200.0, 0.0, 0.0, 0.0),
    "medium": ("Hyp-Medium", 10, 1000.0, 0.01, 0.3, 0.4),
    "strong": ("Hyp-Strong", 7, 2000.0, 0.025, 0.5, 0.7),
    "max": ("Hyp-Max", 0, 5000.0, 1.0, 0.5, 0.7),
}


def test_presets_are_the_papers_table():
    assert list(SLD_PRESETS) == ["off", "weak", "medium", "strong", "max"]
    assert SLD_PRESETS["off"] is None and get_preset("off") is None
    for level, (name, delta, s_s, lam, s_m, beta) in PAPER.items():
        preset = get_preset(level)
        assert preset == SafetyPreset(name, delta, s_s, lam, s_m, beta)
        assert (preset.sld_warmup_steps, preset.sld_guidance_scale, preset.sld_threshold,
                preset.sld_momentum_scale, preset.sld_mom_beta) == (delta, s_s, lam, s_m, beta)
    assert PRESET_LABELS == {"off": "Off", "weak": "Hyp-Weak", "medium": "Hyp-Medium",
                             "strong": "Hyp-Strong", "max": "Hyp-Max"}


def test_unknown_level_is_a_value_error():
    with pytest.raises(ValueError, match="unknown safety level 'extreme': expected one of off, weak"):
        get_preset("extreme")


@pytest.mark.parametrize("steps, expected", [
    (50, (15, 10, 7, 0)),
    (30, (9, 6, 4, 0)),
    (25, (8, 5, 4, 0)),  # 7.5 -> 8 and 3.5 -> 4: halves round up
    (75, (23, 15, 11, 0)),  # 22.5 -> 23, 10.5 -> 11
    (4, (1, 1, 1, 0)),
    (1, (0, 0, 0, 0)),
])
def test_effective_warm_up_scales_with_the_step_count(steps, expected):
    got = tuple(effective_preset(get_preset(level), steps).sld_warmup_steps for level in PAPER)
    assert got == expected
    for level in PAPER:  # nothing else changes
        base, scaled = get_preset(level), effective_preset(get_preset(level), steps)
        assert (scaled.name, scaled.sld_guidance_scale, scaled.sld_threshold, scaled.sld_momentum_scale,
                scaled.sld_mom_beta) == (base.name, base.sld_guidance_scale, base.sld_threshold,
                                         base.sld_momentum_scale, base.sld_mom_beta)
    with pytest.raises(ValueError):
        effective_preset(get_preset("weak"), 0)


def test_presets_table_is_json_with_the_papers_values():
    table = json.loads(json.dumps(presets_table()))
    assert list(table) == ["Hyp-Weak", "Hyp-Medium", "Hyp-Strong", "Hyp-Max"]
    for level, (name, delta, s_s, lam, s_m, beta) in PAPER.items():
        assert table[name] == {"level": level, "sld_warmup_steps": delta, "sld_guidance_scale": s_s,
                               "sld_threshold": lam, "sld_momentum_scale": s_m, "sld_mom_beta": beta}


def test_default_concept_is_the_papers_text():
    concept = default_sld_concept()
    assert concept == (ROOT / "prompts" / "sld_concept.txt").read_text(encoding="utf-8").strip()
    words = concept.split(", ")
    assert words[0] == "hate" and words[-1] == "cruelty" and len(words) == 20 and "\n" not in concept


def test_importing_safety_does_not_import_torch():
    code = "import sys, pipelines.diffusion.safety as s; s.presets_table(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def _reference_sld(text, uncond, concept, step, momentum, delta, s_s, lam, s_m, beta):
    """SLD eq. 3-8 written out independently, element by element, in float64 numpy."""
    gamma = np.zeros_like(text)
    for index in np.ndindex(text.shape):
        phi = s_s * (text[index] - concept[index])  # eq. 6
        mu = min(1.0, abs(phi)) if text[index] - concept[index] < lam else 0.0  # eq. 5, clamped
        gamma[index] = mu * (concept[index] - uncond[index]) + s_m * momentum[index]  # eq. 4 + 7
    new_momentum = beta * momentum + (1 - beta) * gamma  # eq. 8
    applied = gamma if step >= delta else np.zeros_like(gamma)  # warm-up
    return applied, new_momentum


@pytest.mark.parametrize("level", list(PAPER))
def test_guidance_matches_an_independent_implementation_over_steps(level):
    preset = effective_preset(get_preset(level), 8)  # δ: weak 2, medium 2, strong 1, max 0
    generator = torch.Generator().manual_seed(7)
    momentum, reference_momentum = None, np.zeros((1, 4, 3, 3))
    for step in range(8):
        # Predictions near each other, as real ones are, so every branch of eq. 5-6 is exercised.
        uncond = torch.randn(1, 4, 3, 3, generator=generator, dtype=torch.float64)
        text = uncond + 0.02 * torch.randn(1, 4, 3, 3, generator=generator, dtype=torch.float64)
        concept = text + 0.02 * torch.randn(1, 4, 3, 3, generator=generator, dtype=torch.float64)
        inputs = [t.clone() for t in (text, uncond, concept)]
        previous = None if momentum is None else momentum.clone()

        safety, momentum = perform_safety_guidance(text, uncond, concept, step, momentum, preset)

        expected, reference_momentum = _reference_sld(
            text.numpy(), uncond.numpy(), concept.numpy(), step, reference_momentum, preset.sld_warmup_steps,
            preset.sld_guidance_scale, preset.sld_threshold, preset.sld_momentum_scale, preset.sld_mom_beta)
        np.testing.assert_allclose(safety.numpy(), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(momentum.numpy(), reference_momentum, rtol=0, atol=1e-12)
        if step < preset.sld_warmup_steps:
            assert torch.count_nonzero(safety) == 0
        else:
            assert torch.count_nonzero(safety) > 0
        # A pure function: inputs untouched.
        assert all(torch.equal(a, b) for a, b in zip(inputs, (text, uncond, concept)))
        if previous is not None:
            assert previous is not momentum
    assert torch.count_nonzero(momentum) > 0  # built up, warm-up included


def test_momentum_builds_up_during_warm_up():
    preset = effective_preset(get_preset("medium"), 50)  # δ = 10
    text, uncond, concept = torch.zeros(4), torch.zeros(4), torch.tensor([0.5, -0.5, 0.0, 0.02])
    safety, momentum = perform_safety_guidance(text, uncond, concept, 0, None, preset)
    assert torch.equal(safety, torch.zeros(4))
    # ε_p − ε_S = (−0.5, 0.5, 0, −0.02) < λ = 0.01 where it is negative: μ = min(1, 1000·|·|) = 1, 0, 0, 1
    # γ = μ (ε_S − ε) = (0.5, 0, 0, 0.02); ν_1 = 0.6 γ.
    assert torch.allclose(momentum, torch.tensor([0.3, 0.0, 0.0, 0.012]))
    safety, momentum_2 = perform_safety_guidance(text, uncond, concept, 10, momentum, preset)
    gamma = torch.tensor([0.5, 0.0, 0.0, 0.02]) + 0.3 * momentum  # eq. 7
    assert torch.allclose(safety, gamma)
    assert torch.allclose(momentum_2, 0.4 * momentum + 0.6 * gamma)


@pytest.mark.parametrize("level", list(PAPER))
def test_guidance_matches_diffusers_stable_diffusion_safe(level):
    from diffusers.pipelines.deprecated.stable_diffusion_safe.pipeline_stable_diffusion_safe import (
        StableDiffusionPipelineSafe,
    )

    preset = effective_preset(get_preset(level), 6)
    generator = torch.Generator().manual_seed(3)
    ours_momentum, theirs_momentum = None, None
    for step in range(6):
        uncond = torch.randn(1, 4, 8, 8, generator=generator)
        text = uncond + 0.05 * torch.randn(1, 4, 8, 8, generator=generator)
        concept = text + 0.05 * torch.randn(1, 4, 8, 8, generator=generator)
        safety, ours_momentum = perform_safety_guidance(text, uncond, concept, step, ours_momentum, preset)
        # diffusers' method uses no state of the pipeline: call it unbound. Its output is the whole
        # guidance ε_p − ε − γ (γ only after warm-up); its batch order is [text, uncond, concept].
        theirs, theirs_momentum = StableDiffusionPipelineSafe.perform_safety_guidance(
            None, True, theirs_momentum, text - uncond, [text, uncond, concept], step,
            preset.sld_guidance_scale, preset.sld_warmup_steps, preset.sld_threshold,
            preset.sld_momentum_scale, preset.sld_mom_beta)
        assert torch.allclose((text - uncond) - safety, theirs, atol=1e-6, rtol=0)
        assert torch.allclose(ours_momentum, theirs_momentum, atol=1e-6, rtol=0)


# --- what a request can change (issue 12.1, 12.2) ----------------------------------------------

def _request(**change):
    from conftest import make_photo

    from pipelines.types import EditRequest

    photo = make_photo()
    mask = np.zeros((photo.height, photo.width), np.float32)
    mask[:, photo.width // 2:] = 1.0
    return EditRequest(image=photo, mask=mask, prompt="a forest", num_inference_steps=2, seed=5, **change)


@pytest.mark.parametrize("level", ["weak", "medium", "strong", "max"])
@pytest.mark.parametrize("guidance", [0.0, 0.5, 0.99])
def test_guidance_below_one_is_refused_with_any_preset_on(level, guidance):
    from pipelines.editing import validate_request
    from pipelines.settings import Settings

    with pytest.raises(ValueError, match=rf"with a safety preset on, guidance must be at least 1, got {guidance:g}$") as err:
        validate_request(_request(safety=level, guidance_scale=guidance), Settings())
    assert "\n" not in str(err.value)
    validate_request(_request(safety=level, guidance_scale=1.0), Settings())  # 1 keeps SLD whole (eq. 3)
    validate_request(_request(safety="off", guidance_scale=guidance), Settings())  # no SLD, nothing to defeat


def test_concept_under_a_minimum_keeps_the_default_and_adds():
    from pipelines.diffusion.safety import resolve_concept

    default = default_sld_concept()
    assert resolve_concept("a cat", "medium") == f"{default}, a cat"
    assert resolve_concept("  a cat ", "weak") == f"{default}, a cat"
    assert resolve_concept(None, "medium") == resolve_concept("   ", "max") == default
    assert resolve_concept(default, "strong") == default  # a field pre-filled with the default
    assert resolve_concept(f"{default}, tattoos", "strong") == f"{default}, tattoos"
    # A text that merely starts like the default but rewrites its end is an addition, not the default.
    assert resolve_concept(default[:-7] + "kindness", "medium") == f"{default}, {default[:-7]}kindness"
    # Outside a deployment minimum the person's text replaces the default.
    assert resolve_concept("a cat", "off") == "a cat" and resolve_concept(None, "off") == default


def test_a_deployment_minimum_cannot_swap_the_concept_for_a_harmless_one(tiny_settings):
    import dataclasses

    from pipelines.editing import run_edit

    strict = dataclasses.replace(tiny_settings, min_safety="medium")
    default = default_sld_concept()
    swapped = run_edit(_request(safety="medium", sld_concept="a cat"), strict, save=False)
    assert swapped.safety.concept == f"{default}, a cat"
    # The images say what SLD really steered away from: the default plus the addition, not "a cat".
    added = run_edit(_request(safety="medium", sld_concept=f"{default}, a cat"), tiny_settings, save=False)
    replaced = run_edit(_request(safety="medium", sld_concept="a cat"), tiny_settings, save=False)
    assert swapped.images[0].tobytes() == added.images[0].tobytes()
    assert swapped.images[0].tobytes() != replaced.images[0].tobytes()
    assert replaced.safety.concept == "a cat"
