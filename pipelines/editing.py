"""One edit, end to end: `run_edit(request, settings) -> EditResult`.

This module only chains the stages; each stage lives in its own module:

    photo ─► masking (SAM clicks or a given mask, refined) ─► prompting (LLaVA mood, Llama 2 prompt)
          ─► blending (SDXL + SLD + erased encoders, working size) ─► compositing (edge mode, full size)
          ─► ranking (best first) ─► saved PNGs with their parameters

The page (`app.py`) and the command line (`python -m pipelines edit`) both call `run_edit`.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from pipelines import checking, compositing, downloads, gpu_room, images, masking, prompting, ranking, sam_models
from pipelines.safety import MIN_GUIDANCE_WITH_SLD
from pipelines.settings import SAFETY_LEVELS, SCHEDULERS, Settings
from pipelines.types import EditRequest, EditResult, SafetyRecord

# on_progress(stage, i, n, preview): stage is "mask", "mood", "prompt", "download", "load", "diffusion"
# or "save"; i of n steps done (n = 0 when a stage has no steps; for "download", i of n bytes);
# preview is a small image during diffusion.
ProgressFn = Callable[[str, int, int, "Image.Image | None"], None]

MAX_STEPS = 200
MAX_CANDIDATES = 8
MASK_CANDIDATES = 3  # SAM's multimask output (GrabCut repeats its one mask three times)
SAMPLER_NAMES = {"euler": "Euler", "dpmpp_2m": "DPM++ 2M", "euler_trailing": "Euler (trailing)",
                 "ddim_trailing": "DDIM (trailing)", "lcm": "LCM"}


@dataclass
class Prepared:
    """What an edit needs before diffusion: the repaint mask, the edge and the final prompt."""

    mask: np.ndarray  # full-size float32 (H, W) in [0, 1], 1 = repaint: what diffusion paints
    layer: compositing.Matte | np.ndarray  # how the kept layer meets it (compositing.edge_layer)
    mood: str
    prompt: prompting.PromptResult
    notices: list[str]


def validate_request(request: EditRequest, settings: Settings) -> None:
    """Refuse bad requests before any slow work, with one line each.

    The one check of a request's values: the stages `run_edit` calls trust them. What can only be
    known later (the mood LLaVA reads, what the refined mask leaves to repaint) is checked there.
    """
    if not request.points and request.mask is None and request.subject is None:
        raise ValueError("give at least one point on the subject, or a mask")
    if not 1 <= request.num_inference_steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {request.num_inference_steps}")
    if not 0.0 < request.strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {request.strength}")
    if not 0.0 <= request.guidance_scale <= 50.0:
        raise ValueError(f"guidance must be between 0 and 50, got {request.guidance_scale}")
    if not 1 <= request.num_candidates <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {request.num_candidates}")
    if request.seed is not None and not 0 <= request.seed < 2**32:
        raise ValueError(f"seed must be between 0 and {2**32 - 1}, got {request.seed}")
    if request.safety not in SAFETY_LEVELS:
        raise ValueError(f"unknown safety level {request.safety!r} (choose {', '.join(SAFETY_LEVELS)})")
    if SAFETY_LEVELS.index(request.safety) < SAFETY_LEVELS.index(settings.min_safety):
        raise ValueError(f"safety level {request.safety!r} is below this deployment's minimum {settings.min_safety!r}")
    if request.edge not in compositing.EDGE_MODES:
        raise ValueError(f"unknown edge {request.edge!r} (choose {', '.join(compositing.EDGE_MODES)})")
    if request.safety != "off" and request.guidance_scale < MIN_GUIDANCE_WITH_SLD:
        # Below 1 the free-text negative prompt outweighs SLD (see safety.MIN_GUIDANCE_WITH_SLD).
        raise ValueError(f"with a safety preset on, guidance must be at least {MIN_GUIDANCE_WITH_SLD:g}, "
                         f"got {request.guidance_scale:g}")
    checking.checker_mode(settings)  # a required check without nudenet is refused before any work
    if request.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {request.scheduler!r} (choose {', '.join(SCHEDULERS)})")
    if request.fast is not None:
        from pipelines.fast import get_fast_preset

        get_fast_preset(request.fast)  # every preset's guidance is >= 1, so SLD presets combine with it
    if request.erased is not None:
        from pipelines.erasure import list_erased

        available = list_erased(settings.erased_dir)
        if request.erased not in available:
            raise ValueError(f"unknown erased encoder {request.erased!r} "
                             f"(available: {', '.join(available) or 'none'})")
    if int(request.num_inference_steps * request.strength) < 1:
        raise ValueError(f"strength {request.strength} is too low for {request.num_inference_steps} steps: "
                         "no step would run")
    if request.feather < 0:
        raise ValueError(f"feather must be 0 or more, got {request.feather}")
    if request.mask_candidate is not None and not 0 <= request.mask_candidate < MASK_CANDIDATES:
        raise ValueError(f"mask candidate must be between 0 and {MASK_CANDIDATES - 1}, "
                         f"got {request.mask_candidate}")
    width, height = request.image.size
    if request.mask is not None:
        if request.mask.shape != (height, width):
            raise ValueError(f"the mask is {request.mask.shape[1]}x{request.mask.shape[0]} "
                             f"but the photo is {width}x{height}")
        if request.edit_subject:
            raise ValueError("a mask already says what to repaint; leave out 'edit subject'")
    elif request.subject is not None:
        if request.subject.shape != (height, width):
            raise ValueError(f"the subject mask has shape {request.subject.shape} "
                             f"but the photo is {width}x{height}")
    else:
        # Checked now, before SAM is loaded (seconds) or downloaded (minutes).
        masking.check_points(request.image, request.points)


def build_mask(request: EditRequest, settings: Settings, predictor: "masking.MaskPredictor | None" = None,
               ) -> tuple[np.ndarray, compositing.Matte | np.ndarray, list[str]]:
    """The full-size repaint mask for a request (a given mask, or SAM or GrabCut from the clicks),
    and the edge layer the composite uses (a matte, or that mask for the feather and hard edges).

    The request has passed `validate_request` (mask and subject sizes, points, candidate range).
    """
    notices: list[str] = []
    if request.mask is not None:
        # A given mask marks the region to repaint; the rest is kept exactly. Refining it with
        # subject = not-repaint puts the feather ramp inside the repaint region, like for clicks.
        subject = request.mask < 0.5
    elif request.subject is not None:
        subject = request.subject.astype(bool)
    else:
        if predictor is None:
            predictor, notices = sam_models.get_predictor(settings)
        prediction = masking.predict_masks(request.image, request.points, predictor)
        notices += prediction.notices
        subject = prediction.masks[request.mask_candidate or 0]
    # Checked on the binary cut, the same for every edge: a matte may call no pixel solid (a
    # subject all hair) and still keep it.
    cut = masking.refine_mask(subject, grow=request.grow, edit_subject=request.edit_subject)
    if cut.max() <= 0:
        raise ValueError("the mask leaves nothing to repaint")
    if cut.min() >= 1:
        raise ValueError("the mask covers the whole photo: nothing of the subject would be kept")
    layer = compositing.edge_layer(request.image, subject, request.edge, grow=request.grow,
                                   feather=request.feather, edit_subject=request.edit_subject)
    if isinstance(layer, compositing.Matte) and not (layer.alpha == 1.0).any():
        # Nothing solid left (specks, or a subject thinner than the band everywhere): keep it whole.
        notices.append("the subject is thinner than the matting band everywhere: used the feather edge")
        layer = compositing.edge_layer(request.image, subject, "feather", grow=request.grow,
                                       feather=request.feather, edit_subject=request.edit_subject)
    return compositing.diffusion_mask(layer, feather=request.feather), layer, notices


def prepare(request: EditRequest, settings: Settings, on_progress: ProgressFn | None = None,
            predictor: "masking.MaskPredictor | None" = None, timings: dict[str, float] | None = None,
            seed: int | None = None) -> Prepared:
    """Mask, mood and prompt: everything before diffusion (cheap next to it, but may wait on Ollama)."""
    timings = {} if timings is None else timings
    report = on_progress or (lambda *a: None)
    notices: list[str] = []

    report("mask", 0, 0, None)
    start = time.perf_counter()
    mask, layer, mask_notices = build_mask(request, settings, predictor)
    notices += mask_notices
    timings["mask"] = time.perf_counter() - start

    # The local copy first: offline, an uncached model is one line at once, not minutes of retries.
    tokenizers = prompting.load_tokenizers(str(downloads.sdxl_folder(settings, tokenizers_only=True)))
    client = None
    mood = (request.mood or "").strip()
    if request.prompt is None and request.mood is None:
        report("mood", 0, 0, None)
        start = time.perf_counter()
        client = prompting.make_client(settings.ollama_host, settings.ollama_timeout)
        mood_result = prompting.describe_mood(
            request.image, client, settings.vision_model, temperature=settings.llm_temperature,
            seed=seed, keep_alive=settings.ollama_keep_alive)
        mood = mood_result.mood
        notices += mood_result.notices
        timings["mood"] = time.perf_counter() - start

    report("prompt", 0, 0, None)
    start = time.perf_counter()
    if request.prompt is not None:
        prompt = prompting.user_prompt(request.prompt, tokenizers)
    else:
        if not request.keyword.strip() and not mood:
            raise ValueError("type a background keyword or a prompt")
        client = client or prompting.make_client(settings.ollama_host, settings.ollama_timeout)
        prompt = prompting.write_prompt(
            request.keyword, mood, client, tokenizers, settings.text_model,
            temperature=settings.llm_temperature, seed=seed, keep_alive=settings.ollama_keep_alive)
    notices += prompt.notices
    timings["prompt"] = time.perf_counter() - start
    return Prepared(mask=mask, layer=layer, mood=mood, prompt=prompt, notices=notices)


def run_edit(request: EditRequest, settings: Settings, on_progress: ProgressFn | None = None,
             should_cancel: Callable[[], bool] | None = None,
             predictor: "masking.MaskPredictor | None" = None, save: bool = True,
             out: Path | None = None, detector: "checking.Detector | None" = None) -> EditResult:
    """Run one edit.

    Args:
        request: the photo, clicks or mask, keyword/mood/prompt and generation settings.
        settings: models, devices and folders.
        on_progress: called at each stage and each diffusion step (see `ProgressFn`).
        should_cancel: polled every diffusion step; True stops the edit (`blending.Cancelled`).
        predictor: a SAM predictor to reuse (the page keeps one with cached embeddings);
            None loads the one from settings.
        save: write the PNGs (to `out`, or the output folder).
        out: a file path for the first image; further candidates get -2, -3, ... suffixes.
        detector: the nudity detector of the safety check (`checking.Detector`); None: nudenet's.

    Returns:
        The `EditResult`: full-size images with their seeds and scores (best score first), the final
        prompt and its token count, the mood, the mask, saved paths, timings per stage, notices and
        the safety record. Outputs the safety checker withholds (`BACKDROP_SAFETY_CHECKER=block`) are
        left out of images, seeds, scores and paths.

    Raises:
        ValueError: bad input (one line). blending.Cancelled, blending.GpuOutOfMemory,
        RuntimeError: the edit could not run (one line).
    """
    from pipelines import blending, safety
    from pipelines.erasure import with_erased_encoders
    from pipelines.fast import use_fast

    # 1. Check inputs, pick seeds; a Fast preset sets the steps, guidance and sampler its LoRA needs
    validate_request(request, settings)
    fast_preset = None
    if request.fast is not None:
        from pipelines.fast import get_fast_preset

        fast_preset = get_fast_preset(request.fast)
        request = dataclasses.replace(request, num_inference_steps=fast_preset.steps,
                                      guidance_scale=fast_preset.guidance_scale, scheduler=fast_preset.sampler)
    report = on_progress or (lambda *a: None)
    seed = request.seed if request.seed is not None else random.randrange(2**32)
    seeds = [(seed + k) % 2**32 for k in range(request.num_candidates)]
    timings: dict[str, float] = {}

    # 2. Mask, mood, prompt
    ready = prepare(request, settings, on_progress, predictor, timings, seed=seed)
    notices = list(ready.notices)

    # 3. Make room on the GPU (Ollama's models may hold it); fetch SDXL if it is not here yet
    # (bytes as progress), load it (cached), swap in erased encoders
    downloads.sdxl_folder(settings, on_progress=lambda done, total: report("download", done, total, None))
    report("load", 0, 0, None)
    start = time.perf_counter()
    working = images.to_working(request.image, settings.working_pixels)
    notices += gpu_room.make_room_for_edit(settings, working.size, sld=request.safety != "off")
    components = blending.load_sdxl_from_settings(settings)
    notices += use_fast(components, fast_preset, settings.lora_dir)  # fuses, or restores the original UNet
    components, erased_notices = with_erased_encoders(components, request.erased, settings.erased_dir)
    notices += erased_notices
    timings["load"] = time.perf_counter() - start

    # 4. Blended latent diffusion at the working size
    start = time.perf_counter()
    working_mask = images.resize_mask(ready.mask, working.size)
    negative = request.negative_prompt if request.negative_prompt is not None else prompting.default_negative_prompt()
    # seed 001: the second encoder (OpenCLIP bigG) reads the scene, then the quality words that fit
    quality = request.prompt_2 if request.prompt_2 is not None else prompting.quality_words()
    second = prompting.second_prompt(ready.prompt.prompt, quality, (components.tokenizer, components.tokenizer_2))
    prompt_2 = second.prompt
    preset = safety.get_preset(request.safety)
    # Under a deployment minimum the default concept stays; the person may only add to it.
    concept = safety.resolve_concept(request.sld_concept, settings.min_safety) if preset else None
    try:
        blended = blending.blend(
            components, working, working_mask, ready.prompt.prompt, prompt_2=prompt_2,
            negative_prompt=negative, num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale, strength=request.strength, seeds=seeds,
            safety=preset, sld_concept=concept, scheduler=request.scheduler,
            on_step=lambda i, n, preview: report("diffusion", i, n, preview), should_cancel=should_cancel)
    except blending.GpuOutOfMemory as err:
        hint = gpu_room.oom_hint(prompting.make_client(settings.ollama_host, settings.ollama_timeout))
        if not hint:
            raise
        raise blending.GpuOutOfMemory(f"{err}. {hint}") from err
    timings["diffusion"] = time.perf_counter() - start

    # 5. Back to full size, compositing the decoded images once through the edge (matte, feather
    # or hard): the solid kept region is the original photo, byte for byte
    start = time.perf_counter()
    finals = [compositing.composite(request.image, image, ready.layer) for image in blended.decoded]
    timings["composite"] = time.perf_counter() - start

    # 6. Score each candidate (seam, light) and order them best first; each keeps its own seed
    start = time.perf_counter()
    weight = ready.layer.repaint if isinstance(ready.layer, compositing.Matte) else ready.layer
    scores = [ranking.score_candidate(request.image, image, 1.0 - weight) for image in finals]
    order = ranking.best_first(scores)
    timings["ranking"] = time.perf_counter() - start

    # 7. The post-hoc safety check of every output: note, blur or withhold what it flags
    start = time.perf_counter()
    mode = checking.checker_mode(settings)
    checked = checking.check_outputs([finals[i] for i in order], [blended.seeds[i] for i in order],
                                     mode, detector)
    notices += checked.notices
    timings["check"] = time.perf_counter() - start
    record = SafetyRecord(
        preset=safety.PRESET_LABELS[request.safety],
        warmup=blended.safety.sld_warmup_steps if blended.safety else None,
        concept=concept, checker=mode, checks=checked.checks)
    score_of = {blended.seeds[i]: scores[i].total for i in order}

    result = EditResult(
        images=checked.images, seeds=checked.seeds, prompt=ready.prompt.prompt,
        prompt_tokens=ready.prompt.tokens, prompt_2=prompt_2, prompt_2_tokens=second.tokens,
        mood=ready.mood, negative_prompt=negative, mask=weight,
        scores=[score_of[s] for s in checked.seeds], timings=timings, notices=notices, safety=record)

    # 8. Save, with the parameters that reproduce each image and the check it passed
    if save:
        report("save", 0, 0, None)
        start = time.perf_counter()
        effective = blended.safety
        checks = {check.seed: check for check in checked.checks}
        for image, image_seed in zip(result.images, result.seeds):
            text = format_parameters(request, result, image_seed, working.size, settings.sdxl_model,
                                     prompt_2, effective,
                                     checking.describe_check(checks.get(image_seed), mode))
            path, renamed = save_png(image, text, out=out, folder=settings.output_dir, seed=image_seed,
                                     index=len(result.paths))
            if renamed:
                notices.append(f"{renamed} exists; wrote {path} instead")
            result.paths.append(path)
        timings["save"] = time.perf_counter() - start
    return result


# --- saved outputs ------------------------------------------------------------------------------

def format_parameters(request: EditRequest, result: EditResult, seed: int, size: tuple[int, int],
                      model: str, prompt_2: str, effective_safety=None, safety_check: str = "off") -> str:
    """The `parameters` text other SD tools read: prompt, `Negative prompt: ...`, then `Key: value` pairs."""
    from pipelines.safety import PRESET_LABELS

    safety = PRESET_LABELS[request.safety]
    if effective_safety is not None:
        safety += f" (warm-up {effective_safety.sld_warmup_steps} of {request.num_inference_steps} steps)"
    fields = {
        "Steps": request.num_inference_steps,
        "Sampler": SAMPLER_NAMES[request.scheduler],
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model": Path(model).name if Path(model).exists() else model.split("/")[-1],
        "Denoising strength": request.strength,
        "Safety": safety,
        "Erased encoder": request.erased or "none",
        "Fast": request.fast or "off",
        "Safety check": safety_check,
        "Mood": result.mood or "none",
        "Prompt 2": prompt_2,
        "Original size": f"{request.image.width}x{request.image.height}",
        "Backdrop edit": "subject" if request.edit_subject else "background",
        "Edge": request.edge,
        "Score": result.scores[result.seeds.index(seed)] if seed in result.seeds and result.scores else "none",
    }
    tail = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items())
    return f"{result.prompt}\nNegative prompt: {result.negative_prompt}\n{tail}"


def _quote(value: str) -> str:
    # A1111 quotes values that contain the separators; json-style escaping of quotes.
    return '"' + value.replace('"', '\\"') + '"' if ("," in value or ":" in value) else value


def read_parameters(path: str | Path) -> dict[str, str]:
    """Parse a saved PNG's `parameters` chunk back into a dict (prompt, negative prompt and each field)."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
    if text is None:
        raise ValueError(f"{path} has no Backdrop/SD parameters")
    prompt, negative, tail = text.split("\n", 2)
    out = {"Prompt": prompt, "Negative prompt": negative.removeprefix("Negative prompt: ")}
    for match in re.finditer(r'\s*([\w ]+):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)', tail):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        out[key] = value
    return out


def save_png(image: Image.Image, parameters: str, *, out: Path | None, folder: Path, seed: int,
             index: int = 0) -> tuple[Path, Path | None]:
    """Save a PNG with its parameters, never overwriting a file.

    Returns:
        (the path written, the requested path if it existed and another name was used, else None).
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    if out is not None:
        out = Path(out)
        wanted = out if index == 0 else out.with_name(f"{out.stem}-{index + 1}{out.suffix or '.png'}")
        if not wanted.suffix:
            wanted = wanted.with_suffix(".png")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        wanted = Path(folder) / f"backdrop-{stamp}-{seed}.png"
    wanted.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = wanted, 1
    while True:
        try:
            # "x" mode creates the file atomically and fails if it exists: no overwrite, even racing.
            with open(candidate, "xb") as handle:
                image.save(handle, "PNG", pnginfo=info)
            return candidate, (wanted if candidate != wanted else None)
        except FileExistsError:
            n += 1
            candidate = wanted.with_name(f"{wanted.stem}_{n}{wanted.suffix}")
