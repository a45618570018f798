"""Fast presets: a few-step LoRA (here a random one built in code, saved as diffusers saves LoRAs)
is fused into the UNet through the same function a user's run uses, changes its output as the
unfused LoRA does, and switching back gives the original UNet bit for bit; each preset gets the
sampler its model card asks for; the request, the command line and the saved PNG know the preset."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import half_mask, make_photo
from tiny_lora import save_random_lora, tiny_unet_output

from pipelines.diffusion import blending, sdxl_models
from pipelines.diffusion import few_step as fast  # the name the assertions below were written with
from pipelines.diffusion.blending import FEW_STEP_SAMPLERS, blend, make_scheduler
from pipelines.diffusion.sdxl_models import load_sdxl
from pipelines.diffusion.few_step import FAST_PRESETS, FastPreset, use_fast


@pytest.fixture(scope="module")
def components(tiny_sdxl_dir):
    # A private copy of the UNet: these tests change weights in place.
    shared = load_sdxl(str(tiny_sdxl_dir))
    return dataclasses.replace(shared, unet=copy.deepcopy(shared.unet))


@pytest.fixture(scope="module")
def lora_dir(components, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    save_random_lora(components.unet, folder / "a.safetensors", seed=0)
    save_random_lora(components.unet, folder / "b.safetensors", seed=1, target_modules=("to_k", "to_v"))
    return folder


def _preset(filename: str) -> FastPreset:
    return FastPreset(filename, filename, "nobody/nothing", filename, "euler_trailing", 4, 1.0)



def _unfused_lora_output(unet, path) -> torch.Tensor:
    """Reference: diffusers' own LoRA loading, run through PEFT's wrappers without fusing."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin as SDXLLoras

    reference = copy.deepcopy(unet)
    state_dict, alphas = SDXLLoras.lora_state_dict(str(path))
    SDXLLoras.load_lora_into_unet(state_dict, alphas, unet=reference)
    return tiny_unet_output(reference)


def test_every_preset_has_a_few_step_sampler_and_guidance_safety_can_use():
    assert set(FAST_PRESETS) == {"lightning-4step", "lightning-8step", "hyper-4step", "hyper-8step-cfg", "lcm-4step"}
    for name, preset in FAST_PRESETS.items():
        assert preset.name == name and preset.sampler in FEW_STEP_SAMPLERS
        assert preset.guidance_scale >= 1.0  # SLD needs guidance >= 1 (issue 12); 1 = no CFG pass
        assert preset.filename.endswith(".safetensors") and 1 <= preset.steps <= 8
    with pytest.raises(ValueError, match=r"^unknown fast preset 'turbo' \(choose lightning-4step, "):
        fast.get_fast_preset("turbo")


@pytest.mark.parametrize("sampler, cls, timesteps, init_sigma", [
    ("euler_trailing", "EulerDiscreteScheduler", [999, 749, 499, 249], 14.6146),  # sigma at t=999
    ("ddim_trailing", "DDIMScheduler", [999, 749, 499, 249], 1.0),
    ("lcm", "LCMScheduler", [999, 759, 499, 259], 1.0),  # LCM's skipping schedule over 50 steps
])
def test_each_sampler_is_the_model_cards(components, sampler, cls, timesteps, init_sigma):
    scheduler = make_scheduler(components, sampler)
    scheduler.set_timesteps(4)
    assert type(scheduler).__name__ == cls
    assert [round(float(t)) for t in scheduler.timesteps] == timesteps  # 4 steps from pure noise
    assert float(scheduler.init_noise_sigma) == pytest.approx(init_sigma, abs=1e-4)
    if sampler == "ddim_trailing":
        assert scheduler.config.clip_sample is False and scheduler.config.set_alpha_to_one is False


def test_fused_lora_matches_the_unfused_one_and_switching_back_is_bit_identical(components, lora_dir, monkeypatch):
    unet = components.unet
    original = {name: p.detach().clone() for name, p in unet.state_dict().items()}
    pristine = copy.deepcopy(unet)
    base = tiny_unet_output(unet)

    assert use_fast(components, _preset("a.safetensors"), lora_dir) == []
    with_a = tiny_unet_output(unet)
    assert fast.fused_preset(unet) == "a.safetensors"
    assert not any("lora" in name for name in unet.state_dict())  # fused, the wrappers are gone
    assert (with_a - base).abs().max() > 1e-3
    assert torch.allclose(with_a, _unfused_lora_output(pristine, lora_dir / "a.safetensors"), atol=1e-5, rtol=0)
    monkeypatch.setattr(fast, "fuse_lora_file", lambda *a, **k: pytest.fail("fused again"))
    monkeypatch.setattr(fast, "_restore", lambda *a, **k: pytest.fail("restored"))
    assert use_fast(components, _preset("a.safetensors"), lora_dir) == []  # already fused: nothing to do
    monkeypatch.undo()
    assert torch.equal(tiny_unet_output(unet), with_a)

    use_fast(components, _preset("b.safetensors"), lora_dir)  # switch: restore, then fuse the other
    with_b = tiny_unet_output(unet)
    assert torch.allclose(with_b, _unfused_lora_output(pristine, lora_dir / "b.safetensors"), atol=1e-5, rtol=0)

    use_fast(components, None, lora_dir)
    assert fast.fused_preset(unet) is None
    assert torch.equal(tiny_unet_output(unet), base)
    assert all(torch.equal(p, original[name]) for name, p in unet.state_dict().items())


def test_fused_qkv_projections_follow_the_lora(components, lora_dir):
    fused_qkv = copy.deepcopy(components.unet)
    fused_qkv.fuse_qkv_projections()
    qkv = dataclasses.replace(components, unet=fused_qkv)
    base = tiny_unet_output(fused_qkv)
    use_fast(qkv, _preset("a.safetensors"), lora_dir)
    plain = dataclasses.replace(components, unet=copy.deepcopy(components.unet))
    use_fast(plain, _preset("a.safetensors"), lora_dir)
    assert torch.allclose(tiny_unet_output(fused_qkv), tiny_unet_output(plain.unet), atol=1e-5, rtol=0)
    use_fast(qkv, None, lora_dir)
    assert torch.equal(tiny_unet_output(fused_qkv), base)


def test_a_missing_lora_file_is_one_line_naming_the_folder(components, tmp_path):
    with pytest.raises(FileNotFoundError) as info:  # HF_HUB_OFFLINE=1 (conftest): neither cache nor hub
        use_fast(components, FAST_PRESETS["lightning-4step"], tmp_path)
    message = str(info.value)
    assert "\n" not in message and "ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors" in message
    assert str(tmp_path) in message
    assert fast.fused_preset(components.unet) is None


@pytest.mark.parametrize("sampler", FEW_STEP_SAMPLERS)
def test_blend_with_each_few_step_sampler_keeps_the_background(components, sampler):
    size = 64
    photo = blending.Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8), "RGB")
    mask = np.zeros((size, size), np.float32)
    mask[:, 32:] = 1.0
    batches = []
    counted = dataclasses.replace(components, unet=_Recorder(components.unet, batches))
    result = blend(counted, photo, mask, "a beach", num_inference_steps=4, guidance_scale=1.0, scheduler=sampler)
    assert batches == [1, 1, 1, 1] and result.unet_calls == 4  # guidance 1: one slot, no CFG pass
    assert torch.isfinite(result.latents[0]).all()
    assert np.array_equal(np.asarray(result.images[0])[mask == 0], np.asarray(photo)[mask == 0])


class _Recorder:
    def __init__(self, unet, batches):
        self.unet, self.batches = unet, batches

    def __call__(self, sample, *args, **kwargs):
        self.batches.append(sample.shape[0])
        return self.unet(sample, *args, **kwargs)


def test_edit_with_a_fast_preset_and_back(tiny_settings, components):
    from pipelines.editing import run_edit, validate_request
    from pipelines.outputs import read_parameters
    from pipelines.types import EditRequest

    preset = FAST_PRESETS["lightning-4step"]
    save_random_lora(components.unet, tiny_settings.lora_dir / preset.filename)
    photo = make_photo()
    mask = half_mask(photo)  # a given mask: no SAM needed
    request = EditRequest(image=photo, mask=mask, prompt="a beach", mood="", seed=3, fast="lightning-4step",
                          safety="medium")
    shared = sdxl_models.load_sdxl_from_settings(tiny_settings)
    try:
        result = run_edit(request, tiny_settings)
        assert fast.fused_preset(shared.unet) == "lightning-4step"
        params = read_parameters(result.paths[0])
        assert (params["Steps"], params["Sampler"], params["CFG scale"]) == ("4", "Euler (trailing)", "1.0")
        assert params["Fast"] == "lightning-4step"
        run_edit(dataclasses.replace(request, fast=None, num_inference_steps=2), tiny_settings, save=False)
        assert fast.fused_preset(shared.unet) is None  # a standard edit runs the original UNet again
    finally:
        use_fast(shared, None, tiny_settings.lora_dir)
    with pytest.raises(ValueError, match="unknown fast preset 'turbo'"):
        validate_request(dataclasses.replace(request, fast="turbo"), tiny_settings)


def test_command_line_takes_fast():
    from pipelines.entry.cli import build_parser

    args = build_parser().parse_args(["edit", "p.jpg", "--mask", "m.png", "--fast", "lcm-4step"])
    assert args.fast == "lcm-4step"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["edit", "p.jpg", "--mask", "m.png", "--fast", "turbo"])
    assert info.value.code == 2
