"""Blended latent diffusion on the tiny SDXL: parity with diffusers' inpaint pipeline, the exact
background, seeds, strength, SLD inside the loop, progress, cancellation and out-of-memory.

The tiny SDXL folder (tests/tiny_models.py) is loaded by `load_sdxl`, the code a user's run uses.
Images are 128x128 (latents 16x16)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.diffusion import blending, sdxl_models
from pipelines.diffusion.blending import (
    BlendResult,
    Cancelled,
    GpuOutOfMemory,
    blend,
    encode_image,
    encode_prompt,
    latent_mask,
)
from pipelines.diffusion.sdxl_models import SDXLComponents, load_sdxl, load_sdxl_from_settings, sdxl_status
from pipelines.diffusion.safety import default_sld_concept, effective_preset, get_preset
from pipelines.settings import Settings

SIZE = 128


@pytest.fixture(scope="module")
def components(tiny_sdxl_dir) -> SDXLComponents:
    return load_sdxl(str(tiny_sdxl_dir))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A smooth photo-like image (gradients and a disc), so the VAE sees structure, not noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    disc = ((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.05).astype(np.float32)
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y], axis=-1) * (1 - disc[..., None] * 0.7)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """Repaint the right half and the top 40 rows (both edges on the 8-pixel grid), 1 = repaint."""
    m = np.zeros((SIZE, SIZE), np.float32)
    m[:, 64:] = 1.0
    m[:40, :] = 1.0
    return m


@pytest.fixture(scope="module")
def feathered(mask) -> np.ndarray:
    """`mask` with a ramp 0.2, 0.4, ... 1.0 INSIDE the repaint region, as masking.refine_mask makes it."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    distance = np.maximum(np.maximum(x - 63, 0), np.maximum(40 - y, 0))  # Chebyshev, to the kept region
    ramp = np.clip(distance / 5.0, 0.0, 1.0).astype(np.float32)
    assert np.array_equal(ramp > 0, mask > 0)
    return ramp


def _keep(mask: np.ndarray) -> torch.Tensor:
    """(1, 4, 16, 16) bool: latent pixels the BLD blend must hold at z0."""
    return (latent_mask(mask) == 0).expand(1, 4, SIZE // 8, SIZE // 8)


class CountingUNet:
    """Wraps the UNet: counts calls, records batch sizes and inputs, can fail on a chosen call."""

    def __init__(self, unet, fail_with: BaseException | None = None):
        self.unet, self.fail_with = unet, fail_with
        self.calls, self.batch_sizes, self.inputs = 0, [], []

    def __call__(self, sample, timestep, **kwargs):
        self.calls += 1
        self.batch_sizes.append(sample.shape[0])
        self.inputs.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        return self.unet(sample, timestep, **kwargs)


# ------------------------------------------------------------------------------------------------
# Loading


def test_load_is_cached_fp32_on_cpu_and_reads_the_folder(components, tiny_sdxl_dir):
    assert load_sdxl(str(tiny_sdxl_dir)) is components
    assert components.dtype == torch.float32 and components.device == "cpu"
    assert components.unet.dtype == torch.float32 and components.vae.dtype == torch.float32
    assert components.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert components.scheduler_config["timestep_spacing"] == "leading"
    assert components.force_zeros_for_empty_prompt is True
    assert components.tokenizer_2.pad_token == "!"
    # CPU offload means nothing on the CPU: the same configuration, the same cached object.
    assert load_sdxl(str(tiny_sdxl_dir), cpu_offload=True) is components
    settings = Settings(sdxl_model=str(tiny_sdxl_dir), device="cpu")
    assert load_sdxl_from_settings(settings) is components


def test_float16_keeps_the_upcast_vae_in_float32(tiny_sdxl_dir, photo, mask):
    c16 = load_sdxl(str(tiny_sdxl_dir), dtype=torch.float16, vae_tiling=True)
    assert c16.unet.dtype == torch.float16 and c16.text_encoder_2.dtype == torch.float16
    assert c16.vae.config.force_upcast and c16.vae.dtype == torch.float32  # SDXL's VAE overflows in fp16
    assert c16.vae.use_tiling is True
    result = blend(c16, photo, mask, "a forest", num_inference_steps=2, seeds=[0])
    assert torch.isfinite(result.latents[0]).all()
    kept = mask == 0
    assert np.array_equal(np.asarray(result.images[0])[kept], np.asarray(photo)[kept])


def test_missing_weights_give_one_line_saying_what_to_download(tmp_path):
    for model in (str(tmp_path / "no-such-folder"), "someone/sdxl-that-is-not-cached"):
        with pytest.raises(FileNotFoundError) as info:
            load_sdxl(model)
        message = str(info.value)
        assert "\n" not in message and "SDXL weights not found" in message
        assert "huggingface-cli download" in message and "BACKDROP_SDXL_MODEL" in message
    with pytest.raises(FileNotFoundError) as info:
        load_sdxl(str(tmp_path))  # exists, but is not a diffusers folder
    assert f"--local-dir {tmp_path}" in str(info.value) and "\n" not in str(info.value)


def test_sdxl_status_is_one_line_and_loads_nothing():
    cached = dict(sdxl_models._CACHE)
    assert sdxl_status(Settings(device="cpu", sdxl_model="/nowhere")) == (
        "SDXL on cpu (float32): slow, a GPU is recommended")
    assert sdxl_status(Settings(device="cuda", sdxl_model="/nowhere")) == "SDXL on cuda (float16)"
    assert sdxl_status(Settings(device="cuda:1", cpu_offload=True)) == "SDXL on cuda:1 (float16), CPU offload"
    assert sdxl_models._CACHE == cached  # no model was loaded (a missing folder would have raised)


# ------------------------------------------------------------------------------------------------
# Parity with diffusers


def _diffusers_inpaint(components, photo, mask, prompt, negative_prompt, steps, strength, seed, scheduler,
                       monkeypatch, argmax=True):
    """diffusers' SDXL inpaint pipeline (4-channel UNet: it blends like BLD) on the same components."""
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint as inpaint_module
    from diffusers import StableDiffusionXLInpaintPipeline

    if argmax:
        # Our z0 is the VAE posterior's mean (see blending.encode_image); diffusers samples it, which
        # also draws from the generator before the noise. "argmax" (the mode = the mean) aligns both.
        original = inpaint_module.retrieve_latents
        monkeypatch.setattr(inpaint_module, "retrieve_latents",
                            lambda output, generator=None, sample_mode="sample": original(output, generator, "argmax"))
    pipe = StableDiffusionXLInpaintPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=blending.make_scheduler(components, scheduler),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    mask_image = Image.fromarray((mask * 255).round().astype(np.uint8), "L")  # white = repaint
    return pipe(prompt, image=photo, mask_image=mask_image, height=SIZE, width=SIZE,
                negative_prompt=negative_prompt or None,  # our "" is diffusers' None (zeros)
                num_inference_steps=steps, strength=strength, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("scheduler, strength, negative_prompt", [
    ("euler", 1.0, ""),
    ("euler", 0.6, "blurry, low quality"),
    ("dpmpp_2m", 0.5, ""),
])
def test_final_latents_match_diffusers_inpaint(components, photo, mask, monkeypatch, scheduler, strength,
                                               negative_prompt):
    ours = blend(components, photo, mask, "a misty pine forest", negative_prompt=negative_prompt,
                 num_inference_steps=8, strength=strength, seeds=[3], scheduler=scheduler)
    theirs = _diffusers_inpaint(components, photo, mask, "a misty pine forest", negative_prompt, 8, strength, 3,
                                scheduler, monkeypatch)
    assert theirs.shape == ours.latents[0].shape == (1, 4, 16, 16)
    assert torch.allclose(ours.latents[0], theirs, atol=1e-4, rtol=0)  # on this CPU they are bitwise equal


def test_sampled_vae_latents_are_the_one_deliberate_difference(components, photo, mask, monkeypatch):
    # Our z0 is the posterior mean times the scaling factor, the same for every seed...
    x = 2.0 * torch.from_numpy(np.asarray(photo, np.float32) / 255.0)[None].permute(0, 3, 1, 2) - 1.0
    with torch.no_grad():
        mean = components.vae.encode(x).latent_dist.mean
    z0 = encode_image(components, photo)
    assert torch.allclose(z0, mean * 0.13025, atol=1e-7, rtol=0)
    # ...while diffusers' default draws a posterior sample (using the generator first), which moves
    # both the kept latents and every random draw after it.
    ours = blend(components, photo, mask, "a forest", num_inference_steps=4, seeds=[3])
    theirs = _diffusers_inpaint(components, photo, mask, "a forest", "", 4, 1.0, 3, "euler", monkeypatch,
                                argmax=False)
    keep = _keep(mask)
    assert torch.equal(ours.latents[0][keep], z0[keep])
    assert (theirs - ours.latents[0]).abs().max() > 1e-2
    assert not torch.allclose(theirs[keep], z0[keep])


# ------------------------------------------------------------------------------------------------
# Blended latent diffusion


def test_latent_mask_keeps_thin_regions_by_area():
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, 13] = 1.0  # a 1-pixel column, not on the grid
    mask[100:102, :] = 0.3  # a soft band
    lat = latent_mask(mask)
    assert lat.shape == (1, 1, 16, 16) and lat.dtype == torch.float32
    expected = torch.zeros(16, 16)
    expected[:, 1] = 1  # 8 <= 13 < 16
    expected[12, :] = 1  # 96 <= 100, 101 < 104
    assert torch.equal(lat[0, 0], expected)
    # diffusers' nearest-neighbour downsampling would lose the column entirely:
    nearest = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None], size=(16, 16))
    assert nearest[0, 0, :, 1].sum() == 0
    # On an 8-aligned binary mask the two agree.
    aligned = np.zeros((SIZE, SIZE), np.float32)
    aligned[16:48, 24:120] = 1
    near = torch.nn.functional.interpolate(torch.from_numpy(aligned)[None, None], size=(16, 16))
    assert torch.equal(latent_mask(aligned), near)


def test_background_is_z0_and_kept_pixels_are_exact(components, photo, mask, feathered):
    result = blend(components, photo, feathered, "a galaxy", num_inference_steps=5, seeds=[11])
    assert isinstance(result, BlendResult) and result.seeds == [11] and result.safety is None
    z0 = encode_image(components, photo)
    keep = _keep(feathered)
    assert keep.sum() > 0 and (~keep).sum() > 0
    assert torch.equal(result.latents[0][keep], z0[keep])  # BLD: z0 itself after the last step
    assert not torch.allclose(result.latents[0][~keep], z0[~keep], atol=0.1)

    out = np.asarray(result.images[0])
    src = np.asarray(photo)
    assert result.images[0].size == photo.size and result.images[0].mode == "RGB"
    kept = feathered == 0
    assert np.array_equal(out[kept], src[kept])  # byte for byte
    edited = feathered == 1
    assert np.abs(out[edited].astype(int) - src[edited].astype(int)).mean() > 5  # the region changed
    decoded = np.asarray(blending.decode_latents(components, result.latents[0]))
    assert np.array_equal(out[edited], decoded[edited])  # where the mask is 1: the decoded image
    ramp = (feathered > 0) & (feathered < 1)  # in between: the rounded mix
    mix = np.rint(src[ramp] + (decoded[ramp].astype(np.float32) - src[ramp]) * feathered[ramp][:, None])
    assert np.array_equal(out[ramp], mix.astype(np.uint8))


def test_same_seed_same_image_and_candidates_have_their_own_seeds(components, photo, mask):
    pair = blend(components, photo, mask, "a beach", num_inference_steps=3, seeds=[5, 6])
    assert pair.seeds == [5, 6] and len(pair.images) == len(pair.latents) == 2
    assert not torch.allclose(pair.latents[0], pair.latents[1])
    alone = blend(components, photo, mask, "a beach", num_inference_steps=3, seeds=[6])
    again = blend(components, photo, mask, "a beach", num_inference_steps=3, seeds=[5])
    assert torch.equal(alone.latents[0], pair.latents[1])  # independent of the other candidates
    assert torch.equal(again.latents[0], pair.latents[0])
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(pair.images[0]))


def test_strength_runs_fewer_unet_calls(components, photo, mask):
    counter = CountingUNet(components.unet)
    counted = dataclasses.replace(components, unet=counter)
    full = blend(counted, photo, mask, "a city", num_inference_steps=6, strength=1.0, seeds=[0])
    assert counter.calls == full.unet_calls == 6
    counter.calls = 0
    half = blend(counted, photo, mask, "a city", num_inference_steps=6, strength=0.55, seeds=[0, 1])
    assert counter.calls == half.unet_calls == 2 * 3  # int(6 * 0.55) steps per candidate
    assert set(counter.batch_sizes) == {2}  # [uncond, text]
    with pytest.raises(ValueError, match="too low for 10 steps"):
        blend(components, photo, mask, "a city", num_inference_steps=10, strength=0.05)


def test_guidance_scale_one_runs_without_the_unconditional_pass(components, photo, mask):
    counter = CountingUNet(components.unet)
    counted = dataclasses.replace(components, unet=counter)
    blend(counted, photo, mask, "a city", num_inference_steps=2, guidance_scale=1.0)
    assert counter.batch_sizes == [1, 1]  # as diffusers: no CFG at guidance_scale <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "num_inference_steps must be at least 1"),
    ({"strength": 0.0}, "strength must be in"),
    ({"strength": 1.5}, "strength must be in"),
    ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
    ({"scheduler": "ddim"}, "unknown scheduler"),
    ({"seeds": []}, "seeds is empty"),
])
def test_bad_arguments_raise_one_line(components, photo, mask, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        blend(components, photo, mask, "x", **kwargs)
    assert "\n" not in str(info.value)


def test_bad_images_and_masks_raise(components, photo, mask):
    with pytest.raises(ValueError, match=r"mask shape \(64, 128\) does not match the image \(128, 128\)"):
        blend(components, photo, mask[:64], "x")
    with pytest.raises(ValueError, match="multiples of 8"):
        blend(components, photo.resize((100, 128)), np.ones((128, 100), np.float32), "x")
    with pytest.raises(ValueError, match="must be RGB"):
        blend(components, photo.convert("L"), mask, "x")
    with pytest.raises(ValueError, match="mask is empty"):
        blend(components, photo, np.zeros_like(mask), "x")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        blend(components, photo, mask * 2, "x")


# ------------------------------------------------------------------------------------------------
# SLD inside the loop


def test_sld_adds_the_concept_slot_and_acts_only_after_warm_up(components, photo, mask):
    steps = 10
    preset = get_preset("medium")  # δ = 10 for 50 steps -> 2 for 10 steps
    off, on = [], []
    blend(components, photo, mask, "a forest", num_inference_steps=steps, seeds=[1],
          on_latents=lambda k, i, latents: off.append(latents.clone()))
    counter = CountingUNet(components.unet)
    result = blend(dataclasses.replace(components, unet=counter), photo, mask, "a forest",
                   num_inference_steps=steps, seeds=[1], safety=preset,
                   on_latents=lambda k, i, latents: on.append(latents.clone()))
    assert result.safety == effective_preset(preset, steps) and result.safety.sld_warmup_steps == 2
    assert len(off) == len(on) == steps
    for i in range(2):  # warm-up: γ is not applied (momentum builds up only)
        assert torch.equal(on[i], off[i]), i
    for i in range(2, steps):
        assert (on[i] - off[i]).abs().max() > 1e-3, i
    keep = _keep(mask)
    assert torch.equal(on[-1][keep], off[-1][keep])  # SLD never touches the kept background

    # One UNet call per step with [uncond, text, concept]; the concept is encoded like a prompt.
    assert counter.batch_sizes == [3] * steps
    concept_embeds, concept_pooled = encode_prompt(components, default_sld_concept())
    call = counter.inputs[0]
    assert torch.equal(call["encoder_hidden_states"][2:3], concept_embeds)
    assert torch.equal(call["added_cond_kwargs"]["text_embeds"][2:3], concept_pooled)
    assert call["added_cond_kwargs"]["time_ids"].tolist() == [[128, 128, 0, 0, 128, 128]] * 3


def test_sld_warm_up_counts_steps_of_the_full_schedule(components, photo, mask):
    # strength 0.5 of 10 steps runs steps 5..9 of the schedule: past Hyp-Medium's δ = 2 already, so
    # SLD acts from the first executed step (warm-up ends at the same noise level for any strength).
    off, on = [], []
    for preset, record in ((None, off), (get_preset("medium"), on)):
        blend(components, photo, mask, "a forest", num_inference_steps=10, strength=0.5, seeds=[1], safety=preset,
              on_latents=lambda k, i, latents, record=record: record.append(latents.clone()))
    assert len(on) == 5 and (on[0] - off[0]).abs().max() > 1e-3


def test_sld_concept_text_is_used(components, photo, mask):
    counter = CountingUNet(components.unet)
    blend(dataclasses.replace(components, unet=counter), photo, mask, "a forest", num_inference_steps=1,
          safety=get_preset("max"), sld_concept="spiders")
    assert torch.equal(counter.inputs[0]["encoder_hidden_states"][2:3], encode_prompt(components, "spiders")[0])


# ------------------------------------------------------------------------------------------------
# Progress, cancellation, out of memory


def test_on_step_counts_steps_over_candidates_with_previews(components, photo, mask):
    calls = []
    blend(components, photo, mask, "a lake", num_inference_steps=6, seeds=[0, 1],
          on_step=lambda i, n, preview: calls.append((i, n, None if preview is None else preview.size)))
    assert [(i, n) for i, n, _ in calls] == [(i, 12) for i in range(1, 13)]
    with_preview = [i for i, _, size in calls if size is not None]
    assert with_preview == [5, 6, 11, 12]  # every 5th step of a candidate and its last step
    assert {size for _, _, size in calls if size is not None} == {(16, 16)}


def test_cancel_stops_between_steps(components, photo, mask):
    counter = CountingUNet(components.unet)
    asked = []

    def should_cancel() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled):
        blend(dataclasses.replace(components, unet=counter), photo, mask, "a lake", num_inference_steps=10,
              should_cancel=should_cancel)
    assert counter.calls == 3


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
])
def test_out_of_memory_becomes_one_line_and_the_next_edit_works(components, photo, mask, error):
    failing = dataclasses.replace(components, unet=CountingUNet(components.unet, fail_with=error))
    with pytest.raises(GpuOutOfMemory) as info:
        blend(failing, photo, mask, "a lake", num_inference_steps=3, seeds=[0, 1])
    message = str(info.value)
    assert "\n" not in message and message.startswith("GPU out of memory at 128x128 with 2 candidate(s)")
    assert info.value.__context__ is None  # raised outside the handler: the failed frames are released
    result = blend(components, photo, mask, "a lake", num_inference_steps=3, seeds=[0])
    assert result.unet_calls == 3


def test_other_runtime_errors_pass_through(components, photo, mask):
    failing = dataclasses.replace(components, unet=CountingUNet(components.unet, fail_with=RuntimeError("shape")))
    with pytest.raises(RuntimeError, match="^shape$"):
        blend(failing, photo, mask, "a lake", num_inference_steps=2)
