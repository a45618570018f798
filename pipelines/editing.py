"""One edit, end to end: `run_edit(request, settings) -> EditResult`.

This module only chains the stages; each stage lives in its own module:

    photo ─► masking (SAM clicks or a given mask, refined) ─► canvas (the photo on a larger frame)
          ─► prompting (LLaVA mood, Llama 2 prompt) ─► blending (SDXL + SLD + erased encoders, working size)
          ─► compositing (edge mode, full size) ─► ranking (best first) ─► safety check ─► saved PNGs

A plain background (transparent, a colour, a picture, the photo blurred: `backgrounds`) takes a
short cut after the canvas: no prompt, no model, one image through the same composite.

The page (`app.py`), the command line (`python -m pipelines edit`) and the API for programs
(`pipelines/api.py`) all call `run_edit`; the last two describe its result with `result_record`.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, PngImagePlugin

from pipelines import (backgrounds, canvas, checking, compositing, downloads, gpu_room, images, masking, prompting,
                       ranking, sam_models)
from pipelines.safety import MIN_GUIDANCE_WITH_SLD, SafetyPreset
from pipelines.settings import SAFETY_LEVELS, Settings
from pipelines.types import EditRequest, EditResult, SafetyRecord, check_schedule, edit_option, edit_options

if TYPE_CHECKING:
    from pipelines.fast import FastPreset

# on_progress(stage, i, n, preview): stage is "mask", "mood", "prompt", "download", "load", "diffusion"
# or "save"; i of n steps done (n = 0 when a stage has no steps; for "download", i of n bytes);
# preview is a small image during diffusion.
ProgressFn = Callable[[str, int, int, "Image.Image | None"], None]

MAX_STEPS = edit_option("num_inference_steps").range[1]
MAX_CANDIDATES = edit_option("num_candidates").range[1]
MASK_CANDIDATES = edit_option("mask_candidate").range[1] + 1  # SAM's multimask output (GrabCut repeats its one)
SAMPLER_NAMES = {"euler": "Euler", "dpmpp_2m": "DPM++ 2M", "euler_trailing": "Euler (trailing)",
                 "ddim_trailing": "DDIM (trailing)", "lcm": "LCM"}


@dataclass(frozen=True)
class Plan:
    """What `validate_request` read from a request's text and the settings: the background, the
    canvas, the post-hoc check that will run and the Fast preset."""

    background: backgrounds.Background
    frame: canvas.Frame
    checker: str  # checking.checker_mode(settings)
    fast: FastPreset | None  # the request's Fast preset, None without one


@dataclass
class Prepared:
    """What an edit needs before diffusion, on the canvas: the photo, the edge (from which
    `compositing.diffusion_mask` gives what diffusion repaints) and (for `generate`) the final prompt."""

    photo: Image.Image  # the photo on its canvas (canvas.extend_photo); the photo itself without one
    layer: compositing.Matte | np.ndarray  # how the kept layer meets it (compositing.edge_layer, placed)
    mood: str
    prompt: prompting.PromptResult | None  # None for a plain background
    notices: list[str]


@dataclass
class Painted:
    """The outputs before ranking, in seed order, and how they were made."""

    images: list[Image.Image]  # canvas-size composites (RGBA for transparent)
    seeds: list[int]
    size: tuple[int, int]  # the size diffusion worked at (the canvas for a plain background)
    prompt_2: str = ""  # what the second encoder received (prompting.second_prompt)
    prompt_2_tokens: int = 0
    negative_prompt: str = ""
    concept: str | None = None  # the SLD concept as encoded; None without SLD
    safety: SafetyPreset | None = None  # SLD as it ran (the effective warm-up); None without SLD


def validate_request(request: EditRequest, settings: Settings) -> Plan:
    """Refuse bad requests before any slow work, with one line each.

    The one check of a request's values: the stages `run_edit` calls trust them. What can only be
    known later (the mood LLaVA reads, what the refined mask leaves to repaint) is checked there.

    Returns:
        The `Plan`: the parsed background (a picture loaded) and the canvas frame.
    """
    if not request.points and request.mask is None and request.subject is None:
        raise ValueError("give at least one point on the subject, or a mask")
    for option in edit_options(type(request)):  # choices and ranges, from the request's own definition
        option.check(getattr(request, option.field))
    if not 0.0 < request.strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {request.strength}")
    if SAFETY_LEVELS.index(request.safety) < SAFETY_LEVELS.index(settings.min_safety):
        raise ValueError(f"safety level {request.safety!r} is below this deployment's minimum {settings.min_safety!r}")
    if request.safety != "off" and request.guidance_scale < MIN_GUIDANCE_WITH_SLD:
        # Below 1 the free-text negative prompt outweighs SLD (see safety.MIN_GUIDANCE_WITH_SLD).
        raise ValueError(f"with a safety preset on, guidance must be at least {MIN_GUIDANCE_WITH_SLD:g}, "
                         f"got {request.guidance_scale:g}")
    checker = checking.checker_mode(settings)  # a required check without nudenet is refused before any work
    fast = None
    if request.fast is not None:
        from pipelines.fast import get_fast_preset

        fast = get_fast_preset(request.fast)  # every preset's guidance is >= 1, so SLD presets combine with it
    if request.erased is not None:
        from pipelines.erasure import list_erased

        available = list_erased(settings.erased_dir)
        if request.erased not in available:
            raise ValueError(f"unknown erased encoder {request.erased!r} "
                             f"(available: {', '.join(available) or 'none'})")
    check_schedule(request.num_inference_steps, request.strength)
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
    frame = canvas.parse_canvas(request.canvas, request.image.size, request.place, settings.max_image_pixels)
    return Plan(backgrounds.parse_background(request.background, settings.max_image_pixels), frame, checker, fast)


def build_mask(request: EditRequest, settings: Settings, predictor: "masking.MaskPredictor | None" = None,
               outpaint: bool = False) -> tuple[compositing.Matte | np.ndarray, list[str]]:
    """The edge layer the composite uses, on the photo (a matte, or the repaint mask for the feather
    and hard edges) from a given mask, or SAM or GrabCut from the clicks; and notices.

    `outpaint`: the canvas is larger than the photo, so a mask that repaints nothing of the photo
    still leaves the new area to paint.

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
        prediction = masking.predict_masks(request.image, request.points, predictor, checked=True)
        notices += prediction.notices
        subject = prediction.masks[request.mask_candidate or 0]
    # Checked on the binary cut, the same for every edge: a matte may call no pixel solid (a
    # subject all hair) and still keep it.
    cut = masking.refine_mask(subject, grow=request.grow, edit_subject=request.edit_subject)
    if cut.max() <= 0 and not outpaint:
        raise ValueError("the mask leaves nothing to repaint")
    if cut.min() >= 1:
        raise ValueError("the mask covers the whole photo: nothing of the subject would be kept")
    layer = compositing.edge_layer(request.image, subject, request.edge, grow=request.grow,
                                   feather=request.feather, edit_subject=request.edit_subject, cut=cut)
    if isinstance(layer, compositing.Matte) and not (layer.alpha == 1.0).any():
        # Nothing solid left (specks, or a subject thinner than the band everywhere): keep it whole.
        notices.append("the subject is thinner than the matting band everywhere: used the feather edge")
        layer = compositing.edge_layer(request.image, subject, "feather", grow=request.grow,
                                       feather=request.feather, edit_subject=request.edit_subject, cut=cut)
    return layer, notices


def prepare(request: EditRequest, settings: Settings, plan: Plan, on_progress: ProgressFn | None = None,
            predictor: "masking.MaskPredictor | None" = None, timings: dict[str, float] | None = None,
            seed: int | None = None) -> Prepared:
    """Mask (placed on the canvas), mood and prompt: everything before diffusion (cheap next to it,
    but may wait on Ollama). A plain background stops after the mask: no tokenizer, no Ollama."""
    timings = {} if timings is None else timings
    report = on_progress or (lambda *a: None)
    notices: list[str] = []

    report("mask", 0, 0, None)
    start = time.perf_counter()
    # The mask is made on the photo (clicks and masks are in its coordinates), then placed on the
    # canvas, where everything outside the photo joins the region to repaint.
    layer, mask_notices = build_mask(request, settings, predictor, outpaint=plan.frame.extends)
    notices += mask_notices
    photo = canvas.extend_photo(request.image, plan.frame)
    layer = canvas.place_layer(layer, plan.frame)
    timings["mask"] = time.perf_counter() - start
    if plan.background.plain:
        return Prepared(photo=photo, layer=layer, mood="", prompt=None, notices=notices)

    tokenizers = prompting.sdxl_tokenizers(settings)
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
    return Prepared(photo=photo, layer=layer, mood=mood, prompt=prompt, notices=notices)


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
    from pipelines import safety

    # 1. Check inputs, pick seeds; a Fast preset sets the steps, guidance and sampler its LoRA needs
    plan = validate_request(request, settings)
    fast_preset = plan.fast if not plan.background.plain else None
    if fast_preset is not None:
        request = dataclasses.replace(request, num_inference_steps=fast_preset.steps,
                                      guidance_scale=fast_preset.guidance_scale, scheduler=fast_preset.sampler)
    report = on_progress or (lambda *a: None)
    seed = request.seed if request.seed is not None else random.randrange(2**32)
    timings: dict[str, float] = {}

    # 2. Mask on the canvas; mood and prompt (generate only)
    ready = prepare(request, settings, plan, on_progress, predictor, timings, seed=seed)
    notices = list(ready.notices)

    # 3-5. The new background under the kept layer, at the canvas's full size
    if plan.background.plain:
        painted = _paint_plain(request, plan, ready, seed, timings, notices)
    else:
        seeds = [(seed + k) % 2**32 for k in range(request.num_candidates)]
        painted = _generate(request, settings, ready, seeds, fast_preset, report, should_cancel, timings, notices)

    # 6. The post-hoc safety check of every output, in seed order, plain ones too (a cutout of the
    # person's own photo can be what a deployment's minimum forbids): note, blur or withhold it
    start = time.perf_counter()
    mode = plan.checker
    checked = checking.check_outputs(painted.images, painted.seeds, mode, detector)
    notices += checked.notices
    timings["check"] = time.perf_counter() - start
    record = SafetyRecord(
        preset=safety.PRESET_LABELS[request.safety] if not plan.background.plain else "none (no diffusion)",
        warmup=painted.safety.sld_warmup_steps if painted.safety else None,
        concept=painted.concept, checker=mode, checks=checked.checks)

    # 7. Score each delivered candidate (seam, light) and order them best first; each keeps its own
    # seed (a plain background gives one image, and nothing to compare it with)
    start = time.perf_counter()
    weight = ready.layer.repaint if isinstance(ready.layer, compositing.Matte) else ready.layer
    if plan.background.plain:
        scores, order = [], list(range(len(checked.images)))
    else:
        scores = ranking.score_candidates(ready.photo, checked.images, 1.0 - weight)
        order = ranking.best_first(scores)
        timings["ranking"] = time.perf_counter() - start

    frame = plan.frame
    result = EditResult(
        images=[checked.images[i] for i in order], seeds=[checked.seeds[i] for i in order], prompt=ready.prompt.prompt if ready.prompt else "",
        prompt_tokens=ready.prompt.tokens if ready.prompt else 0, prompt_2=painted.prompt_2,
        prompt_2_tokens=painted.prompt_2_tokens, mood=ready.mood,
        negative_prompt=painted.negative_prompt, mask=weight,
        scores=[scores[i].total for i in order] if scores else [], timings=timings, notices=notices,
        safety=record, background=plan.background.describe(),
        canvas=dataclasses.asdict(frame) if frame.extends else None)

    # 8. Save, with the parameters that reproduce each image and the check it passed
    if save:
        report("save", 0, 0, None)
        start = time.perf_counter()
        checks = {check.seed: check for check in checked.checks}
        for image, image_seed in zip(result.images, result.seeds):
            text = format_parameters(request, result, image_seed, painted.size, settings.sdxl_model,
                                     painted.prompt_2, painted.safety,
                                     checking.describe_check(checks.get(image_seed), mode),
                                     canvas_text=frame.describe())
            path, renamed = save_png(image, text, out=out, folder=settings.output_dir, seed=image_seed,
                                     index=len(result.paths))
            if renamed:
                notices.append(f"{renamed} exists; wrote {path} instead")
            result.paths.append(path)
        timings["save"] = time.perf_counter() - start
    return result


def _paint_plain(request: EditRequest, plan: Plan, ready: Prepared, seed: int, timings: dict[str, float],
                 notices: list[str]) -> Painted:
    """Steps 3-5 for a plain background: made from the photo alone, one image, no model loaded."""
    if request.num_candidates > 1:
        notices.append(f"a {plan.background.kind} background gives one image, not {request.num_candidates}")
    start = time.perf_counter()
    image = backgrounds.render(plan.background, ready.photo, ready.layer, plan.frame)
    timings["composite"] = time.perf_counter() - start
    # The seed names the output (and its file) as for generated ones; nothing random used it.
    return Painted(images=[image], seeds=[seed if request.seed is not None else 0], size=image.size)


def _generate(request: EditRequest, settings: Settings, ready: Prepared, seeds: list[int],
              fast_preset: "FastPreset | None",
              report: ProgressFn, should_cancel: Callable[[], bool] | None, timings: dict[str, float],
              notices: list[str]) -> Painted:
    """Steps 3-5 for `generate`: SDXL (with erased encoders and SLD) paints the repaint region at the
    working size, and each image is composited onto the photo at the canvas's full size."""
    from pipelines import blending, safety, sdxl_models
    from pipelines.erasure import with_erased_encoders
    from pipelines.fast import use_fast

    # 3. Fetch SDXL if it is not here yet (bytes as progress), make room on the GPU (Ollama's models
    # may hold it), load SDXL (cached), swap in erased encoders
    downloads.sdxl_folder(settings, on_progress=lambda done, total: report("download", done, total, None))
    report("load", 0, 0, None)
    start = time.perf_counter()
    working = images.to_working(ready.photo, settings.working_pixels)
    notices += gpu_room.make_room_for_edit(settings, working.size, sld=request.safety != "off")
    components = sdxl_models.load_sdxl_from_settings(settings)
    notices += use_fast(components, fast_preset, settings.lora_dir)  # fuses, or restores the original UNet
    components, erased_notices = with_erased_encoders(components, request.erased, settings.erased_dir)
    notices += erased_notices
    timings["load"] = time.perf_counter() - start

    # 4. Blended latent diffusion at the working size (on a canvas, the new area starts from the
    # photo's reflected border: outpainting)
    start = time.perf_counter()
    # What diffusion repaints (for a matte, its band too): only a generated background needs it.
    mask = compositing.diffusion_mask(ready.layer, feather=request.feather)
    working_mask = images.resize_mask(mask, working.size)
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
    finals = compositing.composite_all(ready.photo, blended.decoded, ready.layer)
    timings["composite"] = time.perf_counter() - start
    return Painted(images=finals, seeds=list(blended.seeds), size=working.size, prompt_2=prompt_2,
                   prompt_2_tokens=second.tokens, negative_prompt=negative, concept=concept,
                   safety=blended.safety)


# --- the record programs read -------------------------------------------------------------------

def result_record(result: EditResult, request: EditRequest) -> dict:
    """The edit as one JSON-ready record: `python -m pipelines edit --json` prints it, `/edit` returns it.

    Keys: outputs (saved paths, best first), seeds, scores, edge, background, canvas, prompt, prompt_tokens, prompt_2
    (the second encoder's text, as used), prompt_2_tokens, mood, notices, timings (seconds per stage, rounded to ms) and safety (preset, effective warm-up δ,
    the concept as used, and the check of every output, withheld ones included).
    """
    record = result.safety
    return {
        "outputs": [str(p) for p in result.paths], "seeds": result.seeds, "scores": result.scores,
        "edge": request.edge, "background": result.background, "canvas": result.canvas,
        "prompt": result.prompt, "prompt_tokens": result.prompt_tokens,
        "prompt_2": result.prompt_2, "prompt_2_tokens": result.prompt_2_tokens, "mood": result.mood, "notices": result.notices,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "safety": {"preset": record.preset, "warmup": record.warmup, "concept": record.concept,
                   "checker": record.checker,
                   "checks": [{**asdict(check), "labels": list(check.labels)}
                              for check in record.checks]},
    }


# --- saved outputs ------------------------------------------------------------------------------

def format_parameters(request: EditRequest, result: EditResult, seed: int, size: tuple[int, int],
                      model: str, prompt_2: str, effective_safety=None, safety_check: str = "off",
                      canvas_text: str = "none") -> str:
    """The `parameters` text other SD tools read: prompt, `Negative prompt: ...`, then `Key: value` pairs.

    A plain background (`result.background` other than "generate") had no prompt, seed or model: its
    text has an empty prompt and only the fields that made it.
    """
    from pipelines.safety import PRESET_LABELS

    fields: dict[str, object] = {}
    if result.background == "generate":
        safety = PRESET_LABELS[request.safety]
        if effective_safety is not None:
            safety += f" (warm-up {effective_safety.sld_warmup_steps} of {request.num_inference_steps} steps)"
        fields |= {
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
        }
    else:
        fields["Size"] = f"{size[0]}x{size[1]}"
    fields["Safety check"] = safety_check
    if result.background == "generate":
        fields |= {"Mood": result.mood or "none", "Prompt 2": prompt_2}
    fields |= {
        "Original size": f"{request.image.width}x{request.image.height}",
        "Backdrop edit": "subject" if request.edit_subject else "background",
        "Edge": request.edge,
        "Score": result.scores[result.seeds.index(seed)] if seed in result.seeds and result.scores else "none",
        "Background": result.background,
        "Canvas": canvas_text,
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
    """Save a PNG with its parameters (or the format `out`'s extension asks for: `images.output_format`;
    JPEG has no transparency, so an RGBA image is put on white there), never overwriting a file.

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
    kind, options = images.output_format(wanted)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = wanted, 1
    while True:
        try:
            # "x" mode creates the file atomically and fails if it exists: no overwrite, even racing.
            with open(candidate, "xb") as handle:
                if kind == "PNG":
                    image.save(handle, "PNG", pnginfo=info)
                else:
                    flat = image
                    if kind == "JPEG" and image.mode == "RGBA":
                        flat = Image.new("RGB", image.size, "white")
                        flat.paste(image, mask=image.getchannel("A"))
                    flat.save(handle, kind, **options)
            return candidate, (wanted if candidate != wanted else None)
        except FileExistsError:
            n += 1
            candidate = wanted.with_name(f"{wanted.stem}_{n}{wanted.suffix}")
