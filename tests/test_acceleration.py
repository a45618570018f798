"""Speed options: what runs on which device (and the one-line notes for what cannot), each option
applied to the tiny SDXL through `load_sdxl` with outputs equal to the plain load within float
tolerance, and torch.compile's warm-up paid once (compiled with the "eager" backend: the same
dynamo path without a C++ build)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_lora import tiny_unet_output

from pipelines.diffusion import acceleration, blending, sdxl_models
from pipelines.diffusion.acceleration import SpeedOptions, attention_processors, plan_speed
from pipelines.diffusion.blending import warm_up
from pipelines.diffusion.blending import blend
from pipelines.diffusion.sdxl_models import load_sdxl, load_sdxl_from_settings
from pipelines.settings import Settings

ALL_ON = SpeedOptions(attention="sdpa", channels_last="on", fuse_qkv="on", vae_bf16="on")


@pytest.fixture(autouse=True)
def keep_the_model_cache():
    """Loads with other options here must not push the shared tiny SDXL out of the cache."""
    saved = sdxl_models._CACHE.copy()
    yield
    sdxl_models._CACHE.clear()
    sdxl_models._CACHE.update(saved)


@pytest.fixture(scope="module")
def photo_and_mask():
    rng = np.random.default_rng(0)
    photo = blending.Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8), "RGB")
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1.0
    return photo, mask



def test_defaults_on_the_cpu_change_nothing_but_name_sdpa(tiny_sdxl_dir):
    plan = plan_speed(SpeedOptions(), "cpu", vae_upcast=False)
    assert (plan.sdpa, plan.channels_last, plan.fuse_qkv, plan.vae_bf16, plan.compile_mode) == (True, False, False, False, None)
    assert plan.notes == ()
    components = load_sdxl_from_settings(Settings(sdxl_model=str(tiny_sdxl_dir), device="cpu"))
    assert components is load_sdxl(str(tiny_sdxl_dir))  # the settings' defaults are load_sdxl's defaults
    assert components.speed == ("attention: AttnProcessor2_0 (SDPA)",)


def test_on_runs_everything_the_cpu_can_and_says_what_it_cannot():
    plan = plan_speed(SpeedOptions(channels_last="on", fuse_qkv="on", vae_bf16="on", compile="reduce-overhead"),
                      "cpu", vae_upcast=False)
    assert (plan.sdpa, plan.channels_last, plan.fuse_qkv, plan.vae_bf16) == (True, True, True, True)
    assert plan.compile_mode == "default"
    assert plan.notes == ("CUDA graphs need a GPU without CPU offload: torch.compile mode 'default' is used",)
    classic = plan_speed(SpeedOptions(attention="classic", fuse_qkv="on"), "cpu", vae_upcast=False)
    assert (classic.sdpa, classic.fuse_qkv) == (False, False)
    assert classic.notes == ("fused QKV needs SDPA attention: left unfused",)


def test_auto_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    plan = plan_speed(SpeedOptions(compile="reduce-overhead"), "cuda", vae_upcast=True)
    assert (plan.channels_last, plan.fuse_qkv, plan.vae_bf16) == (True, True, True)
    assert plan.compile_mode == ("reduce-overhead" if acceleration._compile_missing("cuda") == "" else None)
    offloaded = plan_speed(SpeedOptions(compile="reduce-overhead"), "cuda", vae_upcast=True, cpu_offload=True)
    assert offloaded.compile_mode == ("default" if acceleration._compile_missing("cuda") == "" else None)
    assert not plan_speed(SpeedOptions(), "cuda", vae_upcast=False).vae_bf16  # no fp32 upcast to replace
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (6, 1))
    old_gpu = plan_speed(SpeedOptions(vae_bf16="on", compile="default"), "cuda:1", vae_upcast=True)
    assert old_gpu.vae_bf16 is False and old_gpu.compile_mode is None
    assert "this device (cuda:1) has no bfloat16: the VAE stays in float32" in old_gpu.notes
    assert any(note.startswith("torch.compile skipped: ") for note in old_gpu.notes)


def test_every_option_on_gives_the_same_unet_and_a_close_vae(tiny_sdxl_dir, photo_and_mask):
    plain = load_sdxl(str(tiny_sdxl_dir))
    fast = load_sdxl(str(tiny_sdxl_dir), speed=ALL_ON)
    assert fast is not plain and fast.unet is not plain.unet
    assert fast.speed == ("attention: FusedAttnProcessor2_0 (SDPA, fused QKV)", "channels-last", "VAE bfloat16")
    assert attention_processors(fast.vae) == "FusedAttnProcessor2_0 (SDPA, fused QKV)"
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.vae.dtype == torch.bfloat16 and fast.unet.dtype == torch.float32
    assert torch.allclose(tiny_unet_output(fast.unet), tiny_unet_output(plain.unet), atol=1e-5, rtol=0)

    classic = load_sdxl(str(tiny_sdxl_dir), speed=SpeedOptions(attention="classic"))
    assert classic.speed == ("attention: AttnProcessor",)
    assert torch.allclose(tiny_unet_output(classic.unet), tiny_unet_output(plain.unet), atol=1e-5, rtol=0)

    photo, mask = photo_and_mask
    ours, reference = (blend(c, photo, mask, "a lake", num_inference_steps=3, seeds=[1]) for c in (fast, plain))
    kept = mask == 0
    assert np.array_equal(np.asarray(ours.images[0])[kept], np.asarray(photo)[kept])  # still byte for byte
    # bfloat16 keeps 8 bits of mantissa: the photo's latents and the decode move by about 1%.
    assert (ours.latents[0] - reference.latents[0]).abs().max() < 0.05
    difference = np.abs(np.asarray(ours.decoded[0], np.int16) - np.asarray(reference.decoded[0], np.int16))
    assert difference.mean() < 2.0


def test_compile_warm_up_is_paid_once_and_changes_no_number(tiny_sdxl_dir, photo_and_mask, monkeypatch, tmp_path):
    from tiny_lora import save_random_lora
    from torch._dynamo.utils import counters

    from pipelines.diffusion.few_step import FastPreset, use_fast

    monkeypatch.setattr(acceleration, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    plain = load_sdxl(str(tiny_sdxl_dir))
    compiled = load_sdxl(str(tiny_sdxl_dir), speed=SpeedOptions(compile="default"))
    assert compiled.speed == ("attention: AttnProcessor2_0 (SDPA)", "torch.compile (default)")
    before = counters["stats"]["unique_graphs"]
    seconds = warm_up(compiled, size=(64, 64), batches=("cfg",))
    assert seconds > 0 and counters["stats"]["unique_graphs"] > before  # compiled now
    after_warm_up = counters["stats"]["unique_graphs"]
    photo, mask = photo_and_mask
    ours = blend(compiled, photo, mask, "a lake", num_inference_steps=3, seeds=[1])
    assert counters["stats"]["unique_graphs"] == after_warm_up  # the edit compiled nothing more
    reference = blend(plain, photo, mask, "a lake", num_inference_steps=3, seeds=[1])
    assert torch.allclose(ours.latents[0], reference.latents[0], atol=1e-5, rtol=0)

    # A Fast LoRA is fused into the same weight tensors: the compiled UNet runs it without recompiling.
    save_random_lora(plain.unet, tmp_path / "x.safetensors")
    use_fast(compiled, FastPreset("x", "x", "nobody/nothing", "x.safetensors", "euler_trailing", 3, 7.5), tmp_path)
    with_lora = blend(compiled, photo, mask, "a lake", num_inference_steps=3, seeds=[1])
    assert counters["stats"]["unique_graphs"] == after_warm_up
    assert (with_lora.latents[0] - ours.latents[0]).abs().max() > 1e-3
    use_fast(compiled, None, tmp_path)
    assert torch.equal(blend(compiled, photo, mask, "a lake", num_inference_steps=3, seeds=[1]).latents[0], ours.latents[0])
