"""Speed of our blended-latent-diffusion loop against diffusers' pipelines. Prints a table.

    python bench/bench_blending.py                 # (a) CPU, the tiny test SDXL, 256x256, 20 steps
    python bench/bench_blending.py --gpu           # (b) CUDA, the full-size SDXL architecture with
                                                   #     random weights, 1024x1024, 30 steps, float16

(a) loads the tiny SDXL of the tests through `load_sdxl` and times, interleaved round by round, our
`blend` (SLD off and on) and diffusers' `StableDiffusionXLInpaintPipeline` on the same components,
size, steps and seed; both return decoded RGB images. The median of the rounds is reported.

(b) builds SDXL base's UNet, VAE and both CLIP text encoders from their configs (written below, no
download) with random weights: timings do not depend on the weights. It adds diffusers' text-to-image
pipeline as a floor (no VAE encode, no blending) and reports the peak GPU memory of each.

Targets: ours <= 1.05x diffusers inpaint with SLD off; SLD on <= 1.6x SLD off (a third batch slot:
about 1.5x the UNet work).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.blending import SDXLComponents, blend, load_sdxl, make_scheduler  # noqa: E402
from pipelines.safety import get_preset  # noqa: E402

PROMPT = "a misty pine forest at dawn, soft light, award winning photograph"
NEGATIVE = "blurry, low quality"

# SDXL base 1.0's configs (stabilityai/stable-diffusion-xl-base-1.0, unet/ vae/ text_encoder*/ scheduler/).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
SDXL_SCHEDULER = dict(
    _class_name="EulerDiscreteScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    prediction_type="epsilon", use_karras_sigmas=False,
)


def photo_and_mask(size: int) -> tuple[Image.Image, np.ndarray]:
    """A smooth test photo and a mask repainting everything but a centred box (on the 8-pixel grid)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y, 0.8 - 0.5 * x * y], axis=-1)
    mask = np.ones((size, size), np.float32)
    box = (size // 4) // 8 * 8
    mask[box:size - box, box:size - box] = 0.0
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB"), mask


def diffusers_pipelines(components: SDXLComponents, vae):
    """diffusers' SDXL inpaint and text-to-image pipelines over our components (VAE given separately:
    diffusers' pipelines cast their VAE between float16 and float32 while they run)."""
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    parts = dict(vae=vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
                 tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
                 force_zeros_for_empty_prompt=True, add_watermarker=False)
    inpaint = StableDiffusionXLInpaintPipeline(**parts, scheduler=make_scheduler(components, "euler"),
                                               requires_aesthetics_score=False)
    text2img = StableDiffusionXLPipeline(**parts, scheduler=make_scheduler(components, "euler"))
    for pipe in (inpaint, text2img):
        pipe.set_progress_bar_config(disable=True)
    return inpaint, text2img


def run_cases(cases: dict, rounds: int, sync) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every case once per round, interleaved, after one untimed warm-up each.

    Returns:
        (wall seconds, process CPU seconds) per case, one value per round.
    """
    for fn in cases.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def bench_cpu(args) -> None:
    from tiny_models import save_tiny_sdxl

    torch.manual_seed(0)
    folder = save_tiny_sdxl(Path(tempfile.mkdtemp(prefix="bench-tiny-sdxl-")) / "tiny-sdxl")
    components = load_sdxl(str(folder))
    image, mask = photo_and_mask(args.size)
    inpaint, _ = diffusers_pipelines(components, copy.deepcopy(components.vae))
    mask_image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    medium = get_preset("medium")

    def ours(safety=None):
        return lambda: blend(components, image, mask, PROMPT, negative_prompt=NEGATIVE,
                             num_inference_steps=args.steps, seeds=[0], safety=safety)

    def theirs():
        inpaint(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask_image, height=args.size,
                width=args.size, num_inference_steps=args.steps, strength=1.0, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(0))

    cases = {"ours, SLD off": ours(), "diffusers SDXL inpaint": theirs, "ours, SLD on (Hyp-Medium)": ours(medium)}
    wall, cpu = run_cases(cases, args.rounds, lambda: None)
    print(f"CPU, {torch.get_num_threads()} thread(s), tiny SDXL, {args.size}x{args.size}, {args.steps} steps, Euler, "
          f"{args.rounds} interleaved rounds; ratios from the median CPU time of the process (the machine is shared)")
    table(wall, cpu, reference="diffusers SDXL inpaint", memory=None)
    summary(cpu)


def build_full_size(device: str, dtype: torch.dtype) -> tuple[SDXLComponents, object]:
    """SDXL base's architecture with random weights, built on the GPU; and a float16 VAE for diffusers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tiny_models import build_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)
        vae = AutoencoderKL(**SDXL_VAE)  # float32: SDXL's VAE overflows in float16 (force_upcast)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(dtype)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG)).to(dtype)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    components = SDXLComponents(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(), tokenizer_2=build_clip_tokenizer(pad_token="!"),
        scheduler_config=dict(SDXL_SCHEDULER), model_id="sdxl-base-architecture (random weights)",
        device=device, dtype=dtype)
    return components, copy.deepcopy(vae).to(dtype)  # diffusers' users load the VAE in float16 too


def bench_gpu(args) -> None:
    if not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    device = "cuda"
    components, diffusers_vae = build_full_size(device, torch.float16)
    image, mask = photo_and_mask(args.size)
    inpaint, text2img = diffusers_pipelines(components, diffusers_vae)
    mask_image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    medium = get_preset("medium")
    peaks: dict[str, float] = {}

    def measured(name, fn):
        def run():
            torch.cuda.reset_peak_memory_stats()
            fn()
            peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        return run

    common = dict(num_inference_steps=args.steps, guidance_scale=7.5)
    cases = {
        "ours, SLD off": lambda: blend(components, image, mask, PROMPT, negative_prompt=NEGATIVE, seeds=[0], **common),
        "ours, SLD on (Hyp-Medium)": lambda: blend(components, image, mask, PROMPT, negative_prompt=NEGATIVE,
                                                   seeds=[0], safety=medium, **common),
        "diffusers SDXL inpaint": lambda: inpaint(
            PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask_image, height=args.size, width=args.size,
            strength=1.0, generator=torch.Generator("cpu").manual_seed(0), **common),
        "diffusers SDXL text-to-image": lambda: text2img(
            PROMPT, negative_prompt=NEGATIVE, height=args.size, width=args.size,
            generator=torch.Generator("cpu").manual_seed(0), **common),
    }
    cases = {name: measured(name, fn) for name, fn in cases.items()}
    wall, _ = run_cases(cases, args.rounds, torch.cuda.synchronize)
    print(f"{torch.cuda.get_device_name()}, SDXL base architecture (random weights), float16 (VAE float32), "
          f"{args.size}x{args.size}, {args.steps} steps, Euler, {args.rounds} interleaved rounds")
    table(wall, None, reference="diffusers SDXL inpaint", memory=peaks)
    summary(wall)


def table(wall: dict[str, list[float]], cpu: dict[str, list[float]] | None, reference: str,
          memory: dict[str, float] | None) -> None:
    """A Markdown table: wall seconds (median, min), CPU seconds, ratio to the reference, peak memory."""
    basis = cpu if cpu is not None else wall
    ref = statistics.median(basis[reference])
    columns = [("case", 30), ("wall s", 8), ("wall min", 8)]
    columns += [("CPU s", 7)] if cpu is not None else []
    columns += [("x inpaint", 9)]
    columns += [("peak GiB", 8)] if memory is not None else []
    print("| " + " | ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}"
                            for i, (name, width) in enumerate(columns)) + " |")
    print("| " + " | ".join("-" * width if i == 0 else "-" * (width - 1) + ":"
                            for i, (_, width) in enumerate(columns)) + " |")
    for name in wall:
        cells = [f"{name:<30}", f"{statistics.median(wall[name]):>8.3f}", f"{min(wall[name]):>8.3f}"]
        if cpu is not None:
            cells.append(f"{statistics.median(cpu[name]):>7.3f}")
        cells.append(f"{statistics.median(basis[name]) / ref:>9.3f}")
        if memory is not None:
            cells.append(f"{memory.get(name, float('nan')):>8.2f}")
        print("| " + " | ".join(cells) + " |")


def summary(basis: dict[str, list[float]]) -> None:
    off = statistics.median(basis["ours, SLD off"])
    on = statistics.median(basis["ours, SLD on (Hyp-Medium)"])
    inpaint = statistics.median(basis["diffusers SDXL inpaint"])
    print(f"\nours / diffusers inpaint (SLD off): {off / inpaint:.3f}x (target <= 1.05)   "
          f"SLD on / SLD off: {on / off:.3f}x (target <= 1.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="(b): full-size SDXL architecture on CUDA")
    parser.add_argument("--size", type=int, default=None, help="image side (default 256 on CPU, 1024 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20 on CPU, 30 on GPU)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for (a); 1 makes CPU time a fair measure on a shared machine")
    args = parser.parse_args()
    if args.gpu:
        args.size, args.steps = args.size or 1024, args.steps or 30
        bench_gpu(args)
    else:
        args.size, args.steps = args.size or 256, args.steps or 20
        torch.set_num_threads(args.threads)
        bench_cpu(args)


if __name__ == "__main__":
    main()
