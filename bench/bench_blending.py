"""Speed and peak memory of our blended-latent-diffusion loop against diffusers' pipelines, and of
each speed option in turn. Prints one table.

    python bench/bench_blending.py                 # (a) CPU, the tiny test SDXL, 256x256, 20 steps
    python bench/bench_blending.py --gpu           # (b) CUDA, the full-size SDXL architecture with
                                                   #     random weights, 1024x1024, 30 steps, float16
    python bench/bench_blending.py --gpu --compile reduce-overhead   # the compile row with CUDA graphs

(a) loads the tiny SDXL of the tests through `load_sdxl` and times, interleaved round by round, our
`blend` (SLD off and on) and diffusers' `StableDiffusionXLInpaintPipeline` on the same components,
size, steps and seed; both return decoded RGB images. The median of the rounds is reported.

(b) builds SDXL base's UNet, VAE and both CLIP text encoders from their configs (written below, no
download) with random weights: timings do not depend on the weights. It adds diffusers' text-to-image
pipeline as a floor (no VAE encode, no blending) and reports the peak GPU memory of each.

Rows, in one run and one table: (1) interleaved round by round: ours (SLD off and on), diffusers'
inpaint (and text-to-image on the GPU), and 4 candidates against diffusers with 4 images; (2) then,
cumulatively on the same models, each speed option of `pipelines/acceleration.py`: classic attention,
SDPA, channels-last, fused QKV, the VAE in bfloat16, torch.compile (its warm-up is printed below the
table), and a Fast preset (a random LoRA fused into the UNet through `few_step.use_fast`, run as
SDXL-Lightning runs: 4 trailing-Euler steps at guidance 1); (3) on the GPU, CPU offload with 1 and 4
candidates. "x ref" divides by diffusers' inpaint pipeline with as many images as the row has
candidates. Peak memory: `torch.cuda.max_memory_allocated` on the GPU; on the CPU the process's peak
resident set (Linux VmHWM, reset before each call through /proc/self/clear_refs), models included.

Targets: ours <= 1.05x diffusers inpaint with SLD off; SLD on <= 1.6x SLD off (a third batch slot:
about 1.5x the UNet work).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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

from pipelines.diffusion.blending import blend, make_scheduler  # noqa: E402
from pipelines.diffusion.sdxl_models import SDXLComponents, load_sdxl  # noqa: E402
from pipelines.diffusion.few_step import FastPreset, use_fast  # noqa: E402
from pipelines.diffusion.safety import get_preset  # noqa: E402

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


class Meter:
    """Peak memory of one call: GPU allocations, or the process's peak resident set on the CPU."""

    def __init__(self, gpu: bool):
        self.gpu = gpu
        self.unit = "GiB" if gpu else "MiB"

    def reset(self) -> float:
        """Restart the peak; returns the memory in use now."""
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**30
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS
        return self._status("VmRSS:")

    def peak(self) -> float:
        if self.gpu:
            return torch.cuda.max_memory_allocated() / 2**30
        return self._status("VmHWM:")

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")


class Recorder:
    """Wall seconds, process CPU seconds and peak memory per case."""

    def __init__(self, meter: Meter, sync):
        self.meter, self.sync = meter, sync
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.peaks: dict[str, float] = {}
        self.growth: dict[str, float] = {}  # peak minus what was in use when the call started

    def time(self, name: str, fn) -> None:
        self.sync()
        in_use = self.meter.reset()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        self.wall.setdefault(name, []).append(time.perf_counter() - start)
        self.cpu.setdefault(name, []).append(time.process_time() - start_cpu)
        peak = self.meter.peak()
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        self.growth[name] = max(self.growth.get(name, 0.0), peak - in_use)

    def interleaved(self, cases: dict, rounds: int) -> None:
        """Every case once per round, interleaved, after one untimed warm-up each."""
        for fn in cases.values():
            fn()
        for _ in range(rounds):
            for name, fn in cases.items():
                self.time(name, fn)

    def repeated(self, name: str, fn, rounds: int) -> float:
        """One untimed warm-up call (returns its seconds: the compile warm-up), then `rounds` timed calls."""
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        for _ in range(rounds):
            self.time(name, fn)
        return first


def run_speed_steps(components: SDXLComponents, edit, args, record: Recorder, notes: list[str]) -> None:
    """Apply the speed options one after the other (cumulatively) and time an edit after each.

    The app applies the same options at load (`acceleration.apply_speed`); here they are applied by
    hand, one per row, so each row adds one option to the row above.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from tiny_lora import save_random_lora

    unet, vae = components.unet, components.vae
    current = {"components": components}

    def step(name: str, change) -> float:
        change()
        return record.repeated(name, lambda: edit(current["components"]), args.rounds)

    step("step: classic attention (no SDPA)", lambda: [m.set_attn_processor(AttnProcessor()) for m in (unet, vae)])
    step("step: SDPA", lambda: [m.set_attn_processor(AttnProcessor2_0()) for m in (unet, vae)])
    step("step: + channels-last", lambda: [m.to(memory_format=torch.channels_last) for m in (unet, vae)])
    step("step: + fused QKV", lambda: [m.fuse_qkv_projections() for m in (unet, vae)])

    def bf16_vae():
        current["components"] = dataclasses.replace(components, vae=copy.deepcopy(vae).to(torch.bfloat16))

    step("step: + VAE bfloat16", bf16_vae)
    if args.compile != "off":
        mode = args.compile if record.meter.gpu or args.compile != "reduce-overhead" else "default"
        first = step(f"step: + torch.compile ({mode})", lambda: unet.compile(mode=mode, dynamic=False))
        notes.append(f"torch.compile ({mode}): the first edit took {first:.1f} s (the warm-up, once per size)")
    else:
        notes.append("torch.compile row: skipped (--compile off)")

    # Fast: a random LoRA of the few-step LoRAs' shape on the attention projections, fused into the
    # UNet through the app's own `use_fast`, run as a Lightning preset runs (4 trailing-Euler steps).
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    save_random_lora(unet, folder / "random.safetensors", rank=args.lora_rank, std=0.01)
    preset = FastPreset("random", "random", "nobody/nothing", "random.safetensors", "euler_trailing", 4, 1.0)
    use_fast(current["components"], preset, folder)
    record.repeated(f"step: + Fast LoRA ({preset.steps} steps, guidance 1)",
                    lambda: edit(current["components"], num_inference_steps=preset.steps,
                                 guidance_scale=preset.guidance_scale, scheduler=preset.sampler), args.rounds)
    use_fast(current["components"], None, folder)


def bench(args) -> None:
    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    record = Recorder(Meter(gpu), torch.cuda.synchronize if gpu else (lambda: None))
    if gpu:
        components, diffusers_vae = build_full_size("cuda", torch.float16)
    else:
        from tiny_models import save_tiny_sdxl

        torch.manual_seed(0)
        folder = save_tiny_sdxl(Path(tempfile.mkdtemp(prefix="bench-tiny-sdxl-")) / "tiny-sdxl")
        components = load_sdxl(str(folder))  # the CPU defaults: SDPA, nothing else
        diffusers_vae = copy.deepcopy(components.vae)
    image, mask = photo_and_mask(args.size)
    inpaint, text2img = diffusers_pipelines(components, diffusers_vae)
    mask_image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    common = dict(num_inference_steps=args.steps, guidance_scale=7.5)

    def edit(c, seeds=(0,), safety=None, **kwargs):
        blend(c, image, mask, PROMPT, negative_prompt=NEGATIVE, seeds=list(seeds), safety=safety, **{**common, **kwargs})

    def theirs(images=1):
        return lambda: inpaint(PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask_image, height=args.size,
                               width=args.size, strength=1.0, num_images_per_prompt=images,
                               generator=torch.Generator("cpu").manual_seed(0), **common)

    # 1. Ours against diffusers, interleaved
    cases = {
        "ours, SLD off": lambda: edit(components),
        "diffusers SDXL inpaint": theirs(1),
        "ours, SLD on (Hyp-Medium)": lambda: edit(components, safety=get_preset("medium")),
        "ours, 4 candidates": lambda: edit(components, seeds=range(4)),
        "diffusers inpaint, 4 images": theirs(4),
    }
    if gpu:
        cases["diffusers SDXL text-to-image (floor)"] = lambda: text2img(
            PROMPT, negative_prompt=NEGATIVE, height=args.size, width=args.size,
            generator=torch.Generator("cpu").manual_seed(0), **common)
    record.interleaved(cases, args.rounds)
    references = {"ours, 4 candidates": "diffusers inpaint, 4 images",
                  "ours, CPU offload, 4 candidates": "diffusers inpaint, 4 images"}

    # 2. CPU offload: the models wait on the CPU and each moves to the GPU while it runs (before the
    # speed steps: a compiled UNet would recompile, and CUDA graphs re-record, at every move)
    notes: list[str] = []
    modules = (components.unet, components.vae, components.text_encoder, components.text_encoder_2)
    if gpu:
        for module in modules:
            module.to("cpu")
        torch.cuda.empty_cache()
        offloaded = dataclasses.replace(components, cpu_offload=True)
        for name, seeds in (("ours, CPU offload, 1 candidate", (0,)), ("ours, CPU offload, 4 candidates", range(4))):
            record.repeated(name, lambda seeds=seeds: edit(offloaded, seeds=seeds), args.rounds)
        for module in modules:
            module.to("cuda")
    else:
        notes.append("CPU offload rows: not applicable on the CPU (offload keeps models on the CPU for a GPU)")

    # 3. Each speed option, cumulatively
    run_speed_steps(components, edit, args, record, notes)

    if gpu:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, SDXL base architecture (random weights), "
              f"float16 (VAE float32 up to its row), {args.size}x{args.size}, {args.steps} steps, Euler, "
              f"{args.rounds} rounds; compile rows and below include the options above them")
    else:
        print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, tiny SDXL, {args.size}x{args.size}, "
              f"{args.steps} steps, Euler, {args.rounds} rounds; ratios from the median CPU time of the process")
    table(record.wall, None if gpu else record.cpu, reference="diffusers SDXL inpaint", memory=record.peaks,
          unit=record.meter.unit, references=references, growth=record.growth)
    for note in notes:
        print(f"- {note}")
    summary(record.wall if gpu else record.cpu)


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



def table(wall: dict[str, list[float]], cpu: dict[str, list[float]] | None, reference: str,
          memory: dict[str, float] | None, unit: str = "GiB", references: dict[str, str] | None = None,
          growth: dict[str, float] | None = None) -> None:
    """A Markdown table: wall seconds (median, min), CPU seconds, ratio to the row's reference, peak memory
    and (growth) how far the peak rose above what was in use when the call started."""
    basis = cpu if cpu is not None else wall
    references = references or {}
    columns = [("case", 40), ("wall s", 8), ("wall min", 8)]
    columns += [("CPU s", 7)] if cpu is not None else []
    columns += [("x ref", 7)]
    columns += [(f"peak {unit}", 9)] if memory is not None else []
    columns += [(f"+{unit} in call", 11)] if growth is not None else []
    print("| " + " | ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}"
                            for i, (name, width) in enumerate(columns)) + " |")
    print("| " + " | ".join("-" * width if i == 0 else "-" * (width - 1) + ":"
                            for i, (_, width) in enumerate(columns)) + " |")
    for name in wall:
        ref = statistics.median(basis[references.get(name, reference)])
        cells = [f"{name:<40}", f"{statistics.median(wall[name]):>8.3f}", f"{min(wall[name]):>8.3f}"]
        if cpu is not None:
            cells.append(f"{statistics.median(cpu[name]):>7.3f}")
        cells.append(f"{statistics.median(basis[name]) / ref:>7.3f}")
        if memory is not None:
            cells.append(f"{memory.get(name, float('nan')):>9.2f}")
        if growth is not None:
            cells.append(f"{growth.get(name, float('nan')):>11.2f}")
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
    parser.add_argument("--compile", choices=("off", "default", "reduce-overhead", "max-autotune"), default=None,
                        help="torch.compile mode of the compile row (default: 'default' on the GPU, off on the CPU)")
    parser.add_argument("--lora-rank", type=int, default=None, help="rank of the random Fast LoRA (64 GPU, 4 CPU)")
    args = parser.parse_args()
    if args.gpu:
        args.size, args.steps = args.size or 1024, args.steps or 30
        args.compile, args.lora_rank = args.compile or "default", args.lora_rank or 64
    else:
        args.size, args.steps = args.size or 256, args.steps or 20
        args.compile, args.lora_rank = args.compile or "off", args.lora_rank or 4
        torch.set_num_threads(args.threads)
    bench(args)


if __name__ == "__main__":
    main()
