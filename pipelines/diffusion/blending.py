"""Blended latent diffusion on SDXL, with Safe Latent Diffusion inside classifier-free guidance.

Blended Latent Diffusion (BLD; Avrahami, Fried & Lischinski, SIGGRAPH 2023, Alg. 1) repaints only
the masked part of a photo with a text-to-image model:

    z0 = E(x) · scaling_factor                          (the photo's latents, deterministic)
    z_T = noise(z0, t_start)                             (pure noise when strength = 1)
    for each step t:
        z_{t-1} = scheduler step with CFG (and SLD)
        z_{t-1} = m ⊙ z_{t-1} + (1 − m) ⊙ noise(z0, t−1)  (z0 itself after the last step)
    image = D(z_0), then composited onto the photo in pixels with the feathered mask.

noise(z0, t) uses the one noise tensor drawn for the candidate, so the background follows the same
noise trajectory throughout; m is 1 on every latent pixel whose 8x8 block has a pixel to repaint
(`latent_mask`).

We run our own loop instead of diffusers' `StableDiffusionXLInpaintPipeline` because SLD has to sit
inside classifier-free guidance (a third batch slot for the concept text). With SLD off, the loop
gives the same latents as that pipeline with a 4-channel UNet (tests/test_blending.py shows it);
the one deliberate difference, the deterministic photo latents, is explained in `encode_image`.

Heavy imports (torch, diffusers) happen when this module is imported: it is the diffusion stage.
Importing it loads no weights; `sdxl_models.load_sdxl` does, once per configuration, and `blend`
takes what it returns.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipelines import images
from pipelines.errors import Cancelled, GpuOutOfMemory  # noqa: F401  (raised here; callers import them from errors)
from pipelines.prompting.weights import Fragment, parse_weights
from pipelines.diffusion.safety import SafetyPreset, default_sld_concept, effective_preset, get_preset, perform_safety_guidance
from pipelines.diffusion.sdxl_models import SDXLComponents
from pipelines.settings import SCHEDULERS  # ("euler", "dpmpp_2m")
from pipelines.types import EditRequest, check_schedule

logger = logging.getLogger(__name__)

# The samplers the few-step LoRAs need (pipelines/few_step.py); they are chosen through a Fast preset.
FEW_STEP_SAMPLERS = ("euler_trailing", "ddim_trailing", "lcm")

PREVIEW_EVERY = 5  # on_step gets a latent preview every this many steps (and after the last one)

# SDXL latents (already multiplied by the scaling factor) to RGB in [-1, 1], a linear fit; from
# ComfyUI's latent_formats.SDXL. Good enough for a progress preview, no VAE needed.
SDXL_LATENT_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@contextmanager
def _on_device(components: SDXLComponents, module: torch.nn.Module) -> Iterator[None]:
    """With CPU offload, move `module` to the GPU for the block and back to the CPU after it."""
    if not components.cpu_offload:
        yield
        return
    module.to(components.device)
    try:
        yield
    finally:
        module.to("cpu")


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# ------------------------------------------------------------------------------------------------
# The steps of `blend`, each usable on its own
# ------------------------------------------------------------------------------------------------


def encode_prompt(components: SDXLComponents, prompt: str,
                  prompt_2: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a text with both SDXL text encoders, as diffusers' `StableDiffusionXLPipeline.encode_prompt`.

    Weight marks (`realistic photography+++`, see `pipelines.prompting.weights`) never reach a
    tokenizer: each encoder reads the text without them, and compel scales the hidden states of the
    weighted tokens (`empty + (h - empty) * weight`). The pooled vector is the plain text's, as
    compel leaves it too. A text without marks is encoded exactly as diffusers does.

    Args:
        prompt: text for the first encoder (CLIP ViT-L), cut at 77 tokens.
        prompt_2: text for the second encoder (OpenCLIP bigG); None: `prompt`.

    Returns:
        (prompt_embeds, pooled_prompt_embeds): (1, 77, 768 + 1280) float, the penultimate hidden states
        of both encoders concatenated on the last axis; (1, 1280) the second encoder's pooled projection.
        On `components.device`, in `components.dtype`.
    """
    encoders = ((prompt, components.tokenizer, components.text_encoder),
                (prompt_2 or prompt, components.tokenizer_2, components.text_encoder_2))
    hidden_states, pooled = [], None
    for text, tokenizer, text_encoder in encoders:
        fragments = parse_weights(text)
        plain = "".join(fragment.text for fragment in fragments)
        input_ids = tokenizer(plain, padding="max_length", max_length=tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids
        with _on_device(components, text_encoder):
            device = _module_device(text_encoder)
            output = text_encoder(input_ids.to(device), output_hidden_states=True)
            hidden = output.hidden_states[-2]  # SDXL uses the penultimate layer
            if any(fragment.plus for fragment in fragments):
                hidden = _weighted_hidden_states(fragments, tokenizer, text_encoder, device)
        hidden_states.append(hidden.to(components.device))
        pooled = getattr(output, "text_embeds", None)  # only the second encoder has a projection
    prompt_embeds = torch.cat(hidden_states, dim=-1).to(components.dtype)
    return prompt_embeds, pooled.to(device=components.device, dtype=components.dtype)


def encode_sld_concept(components: SDXLComponents, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode SLD's unsafe-concept text with the ORIGINAL text encoders, as `encode_prompt` does.

    With an erased pair swapped in, the prompts go through the erased encoders, but the concept
    must not: they are trained to map it (e.g. nudity) to noise, and SLD would then steer away
    from noise instead of from what it must avoid.
    """
    if components.original_text_encoder is not None:
        components = replace(components, text_encoder=components.original_text_encoder,
                             text_encoder_2=components.original_text_encoder_2)
    return encode_prompt(components, concept)


def _weighted_hidden_states(fragments: list[Fragment], tokenizer, text_encoder,
                            device: torch.device) -> torch.Tensor:
    """Penultimate hidden states (1, 77, C) with each fragment's tokens weighted, by compel.

    compel's `EmbeddingsProvider` gets the fragments already parsed (its own parser reads a
    different syntax, and its `Compel` class would tokenize the raw text, marks included, for
    the pooled vector); one provider per encoder, as compel's `CompelForSDXL` does.
    """
    from compel import EmbeddingsProvider, ReturnedEmbeddingsType

    provider = EmbeddingsProvider(
        tokenizer, text_encoder, truncate=True, device=device,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED)
    return provider.get_embeddings_for_weighted_prompt_fragments(
        [[fragment.text for fragment in fragments]], [[fragment.weight for fragment in fragments]], device=device)


def encode_image(components: SDXLComponents, image: Image.Image) -> torch.Tensor:
    """The photo's latents z0 (BLD): the VAE posterior's MEAN times the scaling factor.

    Deliberate difference from diffusers' inpaint pipeline, which draws a sample of the posterior
    (`retrieve_latents(..., sample_mode="sample")`, using the generator): the kept region must come
    back from the same latents for every seed, and a sample would also use up random numbers before
    the noise is drawn. With `sample_mode="argmax"` diffusers takes the mode, which for the VAE's
    diagonal Gaussian is this mean, and its noise then matches ours (the parity test does that).

    Args:
        image: RGB, sides multiples of 8.

    Returns:
        (1, 4, H/8, W/8) in `components.dtype`, on `components.device`.
    """
    vae = components.vae
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0  # as diffusers' image processor
    pixels = torch.from_numpy(pixels[None]).permute(0, 3, 1, 2)  # a view, as diffusers' numpy_to_pt
    pixels = 2.0 * pixels - 1.0
    with _on_device(components, vae):
        pixels = pixels.to(device=_module_device(vae), dtype=vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
    latents = mean.to(device=components.device, dtype=components.dtype).contiguous()  # not channels-last
    return latents * vae.config.scaling_factor


def latent_mask(mask: np.ndarray, vae_scale_factor: int = 8) -> torch.Tensor:
    """The BLD latent mask: 1 for every latent pixel whose 8x8 block holds any pixel to repaint.

    Area downsampling (mean over each block, then > 0) rather than diffusers' nearest-neighbour pick
    of the block's top-left pixel: a thin repaint region (a strand of background between arms, a
    1-pixel line) is kept however it falls on the grid. The kept pixels inside such a block are
    restored exactly by the pixel composite afterwards. For a mask aligned to the 8-pixel grid both
    give the same result (the parity test relies on that).

    Args:
        mask: float32 (H, W) in [0, 1], 1 = repaint, H and W multiples of `vae_scale_factor`.

    Returns:
        float32 (1, 1, H/8, W/8) of 0s and 1s, on the CPU.
    """
    area = torch.nn.functional.avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], vae_scale_factor)
    return (area > 0).to(torch.float32)


def make_scheduler(components: SDXLComponents, scheduler: str = "euler"):
    """A fresh scheduler (they keep per-run state) from the model's scheduler config.

    "euler": `EulerDiscreteScheduler` (SDXL's default). "dpmpp_2m": `DPMSolverMultistepScheduler`
    as DPM++ 2M (`algorithm_type="dpmsolver++"`, `solver_order=2`). The few-step LoRAs' samplers
    (their model cards): "euler_trailing" (SDXL-Lightning) and "ddim_trailing" (Hyper-SD) space the
    timesteps from the last training step down, so a 4-step run starts from pure noise; "lcm" is
    `LCMScheduler` (LCM-LoRA). DDIM is told not to clip x0: latents are not images in [-1, 1].
    """
    config = components.scheduler_config
    if scheduler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if scheduler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if scheduler == "euler_trailing":
        return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    if scheduler == "ddim_trailing":
        return DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False,
                                         set_alpha_to_one=False)
    if scheduler == "lcm":
        return LCMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}")


def latents_to_preview(latents: torch.Tensor) -> Image.Image:
    """A cheap RGB preview of SDXL latents (1, 4, h, w) through a linear map; the image is h x w."""
    factors = torch.tensor(SDXL_LATENT_RGB_FACTORS, dtype=torch.float32)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors) + bias
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(rgb, "RGB")


def decode_latents(components: SDXLComponents, latents: torch.Tensor) -> Image.Image:
    """Decode latents (1, 4, h, w) to an RGB image (8w x 8h) as diffusers does (float32 VAE for SDXL)."""
    vae = components.vae
    with _on_device(components, vae):
        latents = latents.to(device=_module_device(vae), dtype=vae.dtype) / vae.config.scaling_factor
        decoded = vae.decode(latents, return_dict=False)[0]
    decoded = (decoded / 2 + 0.5).clamp(0, 1)  # diffusers' image_processor.postprocess
    array = decoded.cpu().permute(0, 2, 3, 1).float().numpy()[0]
    return Image.fromarray((array * 255).round().astype("uint8"), "RGB")


# ------------------------------------------------------------------------------------------------
# The edit
# ------------------------------------------------------------------------------------------------


@dataclass
class BlendResult:
    """What `blend` produced."""

    images: list[Image.Image]  # working-size RGB, one per candidate; pixels where mask == 0 are the input's
    decoded: list[Image.Image]  # the VAE's output per candidate, before that composite (run_edit
    #                              composites these once, at the photo's full size)
    seeds: list[int]  # the seed of each candidate
    latents: list[torch.Tensor]  # final latents per candidate, (1, 4, H/8, W/8), on the CPU
    safety: SafetyPreset | None  # the EFFECTIVE SLD preset (δ scaled to the step count), None when off
    unet_calls: int  # UNet forward passes over all candidates (one per executed step each)


def blend(
    components: SDXLComponents,
    image: Image.Image,
    mask: np.ndarray,
    prompt: str,
    *,
    prompt_2: str | None = None,
    negative_prompt: str = "",
    negative_prompt_2: str | None = None,
    num_inference_steps: int = EditRequest.num_inference_steps,  # the edit's defaults (types.EditRequest)
    guidance_scale: float = EditRequest.guidance_scale,
    strength: float = EditRequest.strength,
    seeds: Sequence[int] = (0,),
    safety: SafetyPreset | None = None,
    sld_concept: str | None = None,
    scheduler: str = EditRequest.scheduler,
    on_step: Callable[[int, int, Image.Image | None], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_latents: Callable[[int, int, torch.Tensor], None] | None = None,
) -> BlendResult:
    """Repaint the masked part of a photo with SDXL (Blended Latent Diffusion), optionally with SLD.

    Args:
        components: from `sdxl_models.load_sdxl` (or with erased text encoders swapped in).
        image: the photo at its working size, RGB, sides multiples of 8 (64 for SDXL's best results).
        mask: float32 (H, W) in [0, 1] at the image's size, 1 = repaint. Any value > 0 frees the latent
            pixel underneath; the output is `images.composite(image, decoded, mask)`, so pass the
            feathered mask and the seam is soft while pixels where it is 0 stay the input's exactly.
        prompt, prompt_2: text for the first and second text encoder (prompt_2 None: prompt).
        negative_prompt, negative_prompt_2: the unconditional text. Empty (both): zeros, when the
            model says `force_zeros_for_empty_prompt` (SDXL base does), as diffusers does for None.
        num_inference_steps: steps of the full schedule; with `strength` < 1 only the last
            int(num_inference_steps * strength) are run, as in diffusers.
        guidance_scale: classifier-free guidance s_g; <= 1 runs no unconditional pass (as diffusers),
            unless SLD is on, which always needs it.
        strength: 1.0 starts from pure noise; lower starts from the photo noised to that level.
        seeds: one candidate per seed; the noise of each comes from a CPU `torch.Generator` seeded with
            it, so a seed gives the same image on any GPU and for any number of candidates.
        safety: an SLD preset (`safety.get_preset`) as defined for 50 steps, or None for off.
        sld_concept: the unsafe concept text; None: the paper's (`safety.default_sld_concept`).
        scheduler: "euler" or "dpmpp_2m", or a Fast preset's sampler (`FEW_STEP_SAMPLERS`).
        on_step: called after every step as on_step(i, n, preview): i counts executed steps over all
            candidates (1..n), n = executed steps x candidates, preview a latent-RGB image every
            `PREVIEW_EVERY` steps and at each candidate's last step, else None.
        should_cancel: checked before every step; True raises `Cancelled`.
        on_latents: called after every step as on_latents(candidate, step, latents), the latents after
            the BLD blend; for tests and debugging.

    Returns:
        A `BlendResult` with one image per seed.

    Raises:
        ValueError: bad arguments (one line).
        Cancelled: `should_cancel()` returned True.
        GpuOutOfMemory: the GPU ran out of memory; it has been freed.
    """
    # 1. Check inputs: an edit's were checked by `editing.validate_request`; these guard direct callers
    # (warm-up, benchmarks) in diffusers' terms, and the rule on executed steps is the request's own.
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if scheduler not in SCHEDULERS + FEW_STEP_SAMPLERS:
        raise ValueError(f"unknown scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    if image.mode != "RGB":
        raise ValueError(f"the image must be RGB, got mode {image.mode}")
    width, height = image.size
    if width % 8 or height % 8:
        raise ValueError(f"image sides must be multiples of 8, got {width}x{height}")
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({height}, {width})")
    if not (np.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1):
        raise ValueError("mask values must be in [0, 1]")
    if not mask.any():
        raise ValueError("the mask is empty: nothing to repaint")
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("seeds is empty: at least one candidate is needed")
    check_schedule(num_inference_steps, strength)

    try:
        return _blend(components, image, mask.astype(np.float32), prompt, prompt_2, negative_prompt,
                      negative_prompt_2, num_inference_steps, guidance_scale, strength, seeds, safety,
                      sld_concept, scheduler, on_step, should_cancel, on_latents)
    except torch.cuda.OutOfMemoryError:
        pass
    except RuntimeError as err:
        if "out of memory" not in str(err).lower():
            raise
    # Outside the `except` block the exception, its traceback and the frames holding the tensors are
    # gone, so the memory can be given back before the one-line error goes up.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise GpuOutOfMemory(
        f"GPU out of memory at {width}x{height} with {len(seeds)} candidate(s): try fewer candidates, a smaller "
        "working size (BACKDROP_WORKING_PIXELS) or BACKDROP_CPU_OFFLOAD=1; the memory has been freed")


@torch.no_grad()
def _blend(components: SDXLComponents, image: Image.Image, mask: np.ndarray, prompt: str,
           prompt_2: str | None, negative_prompt: str, negative_prompt_2: str | None,
           num_inference_steps: int, guidance_scale: float, strength: float, seeds: list[int],
           safety: SafetyPreset | None, sld_concept: str | None, scheduler_name: str,
           on_step: Callable | None, should_cancel: Callable | None,
           on_latents: Callable | None) -> BlendResult:
    device, dtype = components.device, components.dtype
    width, height = image.size
    unet = components.unet
    sld = effective_preset(safety, num_inference_steps) if safety is not None else None
    # diffusers runs CFG only when guidance_scale > 1; SLD needs the unconditional pass regardless.
    do_cfg = guidance_scale > 1.0 or sld is not None

    # 2. Encode prompts: [uncond, text] for CFG, and the concept as a third slot for SLD
    prompt_embeds, pooled = encode_prompt(components, prompt, prompt_2)
    slots, pooled_slots = [prompt_embeds], [pooled]
    if do_cfg:
        if not negative_prompt and not negative_prompt_2 and components.force_zeros_for_empty_prompt:
            negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
        else:
            negative_embeds, negative_pooled = encode_prompt(components, negative_prompt or "",
                                                             negative_prompt_2 or negative_prompt or "")
        slots, pooled_slots = [negative_embeds, prompt_embeds], [negative_pooled, pooled]
    if sld is not None:
        concept_embeds, concept_pooled = encode_sld_concept(components, sld_concept or default_sld_concept())
        slots.append(concept_embeds)
        pooled_slots.append(concept_pooled)
    encoder_hidden_states = torch.cat(slots)
    # SDXL's micro-conditioning: (original h, w, crop top, left, target h, w), the same for every slot.
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    added_cond_kwargs = {"text_embeds": torch.cat(pooled_slots), "time_ids": time_ids.repeat(len(slots), 1)}

    # 3. Encode the photo (BLD: z0) and downsample the mask to the latents
    image_latents = encode_image(components, image)
    keep_mask = latent_mask(mask).to(device) == 0  # True where the latents are the photo's

    executed_steps = min(int(num_inference_steps * strength), num_inference_steps)
    total_steps = executed_steps * len(seeds)  # on_step's n
    final_latents, candidate_images, decoded_images = [], [], []
    unet_calls = 0
    with _on_device(components, unet):
        for k, seed in enumerate(seeds):
            generator = torch.Generator(device="cpu").manual_seed(seed)

            # 4. Set timesteps: with strength s only the last int(steps * s) are run (diffusers' get_timesteps)
            scheduler = make_scheduler(components, scheduler_name)
            scheduler.set_timesteps(num_inference_steps, device=device)
            t_start = num_inference_steps - executed_steps
            timesteps = scheduler.timesteps[t_start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):  # DDIM has no step index to set
                scheduler.set_begin_index(t_start * scheduler.order)
            step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}

            # 5. Prepare latents: pure noise at strength 1, else z0 noised to the first executed step
            noise = randn_tensor(image_latents.shape, generator=generator, device=torch.device(device), dtype=dtype)
            if strength == 1.0:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, timesteps[:1])

            # 6. Denoising loop
            momentum = None  # SLD's ν
            for i, t in enumerate(timesteps):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("the edit was cancelled")
                model_input = scheduler.scale_model_input(torch.cat([latents] * len(slots)), t)
                noise_pred = unet(model_input, t, encoder_hidden_states=encoder_hidden_states,
                                  added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
                unet_calls += 1

                # 6.1 Guidance. CFG (SLD eq. 2): ε̃ = ε(z) + s_g (ε(z, c_p) − ε(z)); with SLD (eq. 3)
                # the safety term γ_t is subtracted inside the bracket.
                if do_cfg:
                    noise_pred_uncond, noise_pred_text = noise_pred[0:1], noise_pred[1:2]
                    noise_guidance = noise_pred_text - noise_pred_uncond
                    if sld is not None:
                        # δ counts steps of the full schedule, so warm-up ends at the same noise level
                        # whatever the strength.
                        safety_guidance, momentum = perform_safety_guidance(
                            noise_pred_text, noise_pred_uncond, noise_pred[2:3], t_start + i, momentum, sld)
                        noise_guidance = noise_guidance - safety_guidance
                    noise_pred = noise_pred_uncond + guidance_scale * noise_guidance

                # 6.2 Scheduler step z_t -> z_{t-1}
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]

                # 6.3 BLD: outside the mask, the photo's latents noised to the next step with the same
                # noise, and z0 itself after the last step.
                if i < len(timesteps) - 1:
                    background = scheduler.add_noise(image_latents, noise, timesteps[i + 1:i + 2])
                else:
                    background = image_latents
                # (torch.where may hand back a channels-last tensor; the UNet's numerics depend on the layout)
                latents = torch.where(keep_mask, background, latents).contiguous()

                if on_latents is not None:
                    on_latents(k, i, latents)
                if on_step is not None:
                    last = i == len(timesteps) - 1
                    preview = latents_to_preview(latents) if last or (i + 1) % PREVIEW_EVERY == 0 else None
                    on_step(k * executed_steps + i + 1, total_steps, preview)

            final_latents.append(latents)

    # 7. Decode, then composite in pixels: where the mask is 0 the photo's own pixels, byte for byte
    for latents in final_latents:
        decoded = decode_latents(components, latents)
        decoded_images.append(decoded)
        candidate_images.append(images.composite(image, decoded, mask))

    return BlendResult(images=candidate_images, decoded=decoded_images, seeds=list(seeds),
                       latents=[latents.detach().to("cpu", torch.float32) for latents in final_latents],
                       safety=sld, unet_calls=unet_calls)


def warm_up(components: SDXLComponents, size: tuple[int, int] = (1024, 1024), batches: tuple[str, ...] = ("cfg",)) -> float:
    """Run one small edit per batch layout so compilation and CUDA's lazy set-up happen now.

    torch.compile compiles on the first call for each input shape; the page can call this in the
    background at start (before serving edits: it uses the same models), the command line need not.
    Without compile it still initialises cuDNN and the allocator, so it is cheap and harmless.

    Args:
        components: `sdxl_models.SDXLComponents`.
        size: the working size (width, height), multiples of 8: compile specialises on it.
        batches: "cfg" (prompt + negative: the default edit), "sld" (+ the safety concept), "single"
            (guidance 1, as the Fast presets run).

    Returns:
        Seconds spent.
    """
    start = time.perf_counter()
    width, height = size
    image = Image.new("RGB", (width, height), (128, 128, 128))
    mask = np.ones((height, width), np.float32)
    layouts = {"cfg": dict(guidance_scale=7.5), "sld": dict(guidance_scale=7.5, safety=get_preset("medium")),
               "single": dict(guidance_scale=1.0)}
    for batch in batches:
        blend(components, image, mask, "warm-up", num_inference_steps=2, seeds=[0], **layouts[batch])
    seconds = time.perf_counter() - start
    logger.info("SDXL warm-up at %dx%d (%s): %.1f s", width, height, ", ".join(batches), seconds)
    return seconds
