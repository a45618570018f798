"""One edit, end to end: `run_edit(request, settings) -> EditResult`.

This module only chains the stages; each stage lives in its own module, and `run_edit` reads as the
numbered steps of one edit:

    photo ─► masking (SAM clicks or a given mask, refined) ─► canvas (the photo on a larger frame)
          ─► prompting (LLaVA mood, Llama 2 prompt) ─► blending (SDXL + SLD + erased encoders, working size)
          ─► compositing (edge mode, full size) ─► output_check (post-hoc) ─► ranking (best first) ─► outputs (PNGs)

A plain background (transparent, a colour, a picture, the photo blurred: `backgrounds`) takes a
short cut after the canvas: no prompt, no model, one image through the same composite.

The page (`app.py`), the command line (`python -m pipelines edit`) and the API for programs
(`pipelines/api.py`) all call `run_edit`; what is written out (PNG text, the JSON record) is `outputs`'.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipelines import downloads, images, outputs, prompting
from pipelines.composite import backgrounds, canvas, compositing, output_check, ranking
from pipelines.diffusion import gpu_room
from pipelines.masks import masking, sam_models
from pipelines.masks import subject as subject_models
from pipelines.diffusion.safety import MIN_GUIDANCE_WITH_SLD, SafetyPreset
from pipelines.settings import SAFETY_LEVELS, Settings
from pipelines.types import EditRequest, EditResult, SafetyRecord, check_schedule, edit_option, edit_options

if TYPE_CHECKING:
    from pipelines.diffusion.few_step import FastPreset

# on_progress(stage, i, n, preview): stage is "mask", "mood", "prompt", "download", "load", "diffusion"
# or "save"; i of n steps done (n = 0 when a stage has no steps; for "download", i of n bytes);
# preview is a small image during diffusion.
ProgressFn = Callable[[str, int, int, "Image.Image | None"], None]

MAX_STEPS = edit_option("num_inference_steps").range[1]
MAX_CANDIDATES = edit_option("num_candidates").range[1]
MASK_CANDIDATES = edit_option("mask_candidate").range[1] + 1  # SAM's multimask output (GrabCut repeats its one)


@dataclass(frozen=True)
class ParsedOptions:
    """What `validate_request` read from a request's text and the settings: the background, the
    canvas, the post-hoc check that will run and the Fast preset."""

    background: backgrounds.Background
    frame: canvas.Frame
    checker: str  # output_check.checker_mode(settings)
    fast: FastPreset | None  # the request's Fast preset, None without one


@dataclass
class SubjectOnCanvas:
    """Step 2: the photo and the kept layer on the canvas (from the layer, `compositing.diffusion_mask`
    gives what diffusion repaints)."""

    photo: Image.Image  # the photo on its canvas (canvas.extend_photo); the photo itself without one
    layer: compositing.KeptLayer  # how the kept layer meets it (compositing.edge_layer, placed)
    notices: list[str]


@dataclass
class BackgroundPrompt:
    """Step 3, for a generated background: the mood and the prompt SDXL's first encoder receives."""

    mood: str  # LLaVA's, or the request's; "" when a prompt was given
    prompt: prompting.PromptResult
    notices: list[str]
    timings: dict[str, float]  # seconds: "mood" (when LLaVA ran) and "prompt"


@dataclass
class Candidates:
    """Step 4: the outputs before the check and the ranking, in seed order, and how they were made."""

    images: list[Image.Image]  # canvas-size composites (RGBA for transparent)
    seeds: list[int]
    size: tuple[int, int]  # the size diffusion worked at (the canvas for a plain background)
    notices: list[str]
    timings: dict[str, float]  # seconds: "composite"; "load" and "diffusion" when generated
    prompt_2: str = ""  # what the second encoder received (prompting.second_prompt)
    prompt_2_tokens: int = 0
    negative_prompt: str = ""
    concept: str | None = None  # the SLD concept as encoded; None without SLD
    safety: SafetyPreset | None = None  # SLD as it ran (the effective warm-up); None without SLD


def validate_request(request: EditRequest, settings: Settings) -> ParsedOptions:
    """Refuse bad requests before any slow work, with one line each.

    The one check of a request's values: the stages `run_edit` calls trust them. What can only be
    known later (the mood LLaVA reads, what the refined mask leaves to repaint) is checked there.

    Returns:
        The `ParsedOptions`: the parsed background (a picture loaded) and the canvas frame.
    """
    if not request.points and request.mask is None and request.subject is None and not request.auto_subject:
        raise ValueError("give at least one point on the subject, or a mask")
    if request.auto_subject and (request.points or request.mask is not None or request.subject is not None):
        raise ValueError("the automatic subject takes no points and no mask: give one or the other")
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
    checker = output_check.checker_mode(settings)  # a required check without nudenet is refused before any work
    fast = None
    if request.fast is not None:
        from pipelines.diffusion.few_step import get_fast_preset

        fast = get_fast_preset(request.fast)  # every preset's guidance is >= 1, so SLD presets combine with it
    if request.erased is not None:
        from pipelines.diffusion.erasure import list_erased

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
    elif not request.auto_subject:
        # Checked now, before SAM is loaded (seconds) or downloaded (minutes).
        masking.check_points(request.image, request.points)
    frame = canvas.parse_canvas(request.canvas, request.image.size, request.place, settings.max_image_pixels)
    return ParsedOptions(backgrounds.parse_background(request.background, settings.max_image_pixels), frame, checker, fast)


def build_mask(request: EditRequest, settings: Settings, predictor: "masking.MaskPredictor | None" = None,
               outpaint: bool = False) -> tuple[compositing.KeptLayer, list[str]]:
    """The kept layer the composite uses, on the photo (`compositing.edge_layer`), from a given
    mask, or SAM or GrabCut from the clicks; and notices.

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
    elif request.auto_subject:
        model, notices = subject_models.get_subject_model(settings)
        if model is None:
            raise ValueError(f"the automatic subject needs a subject model; {notices[0]}")
        subject = subject_models.find_subject(request.image, model)
        notices.append(f"automatic subject: found by {model.name}")
    else:
        if predictor is None:
            predictor, notices = sam_models.get_predictor(settings)
        # Without SAM, a subject model (if one can be had) finds what was clicked.
        model = subject_models.get_subject_model(settings, download=False)[0] if predictor is None else None
        prediction = masking.predict_masks(request.image, request.points, predictor, subject_model=model,
                                           checked=True)
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
    if not (layer.repaint == 0.0).any():
        # Nothing solid left (specks, or a subject thinner than the band everywhere): keep it whole.
        notices.append("the subject is thinner than the matting band everywhere: used the feather edge")
        layer = compositing.edge_layer(request.image, subject, "feather", grow=request.grow,
                                       feather=request.feather, edit_subject=request.edit_subject, cut=cut)
    return layer, notices




def run_edit(request: EditRequest, settings: Settings, on_progress: ProgressFn | None = None,
             should_cancel: Callable[[], bool] | None = None,
             predictor: "masking.MaskPredictor | None" = None, save: bool = True,
             out: Path | None = None, detector: "output_check.Detector | None" = None) -> EditResult:
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
        detector: the nudity detector of the safety check (`output_check.Detector`); None: nudenet's.

    Returns:
        The `EditResult`: full-size images with their seeds and scores (best score first), the final
        prompt and its token count, the mood, the mask, saved paths, timings per stage, notices and
        the safety record. Outputs the safety checker withholds (`BACKDROP_SAFETY_CHECKER=block`) are
        left out of images, seeds, scores and paths.

    Raises:
        ValueError: bad input (one line). blending.Cancelled, blending.GpuOutOfMemory,
        RuntimeError: the edit could not run (one line).
    """
    from pipelines.diffusion import safety

    report = on_progress or (lambda *a: None)
    timings: dict[str, float] = {}

    # 1. Check inputs, pick the seed; a Fast preset sets the steps, guidance and sampler its LoRA needs
    options = validate_request(request, settings)
    plain = options.background.plain
    fast_preset = options.fast if not plain else None
    if fast_preset is not None:
        request = dataclasses.replace(request, num_inference_steps=fast_preset.steps,
                                      guidance_scale=fast_preset.guidance_scale, scheduler=fast_preset.sampler)
    seed = request.seed if request.seed is not None else random.randrange(2**32)

    # 2. The subject's mask and the photo, placed on the canvas
    report("mask", 0, 0, None)
    start = time.perf_counter()
    subject = cut_subject(request, settings, options.frame, predictor)
    timings["mask"] = time.perf_counter() - start
    notices = list(subject.notices)

    # 3. Mood and prompt (a generated background only: a plain one needs no tokenizer, no Ollama)
    prompt = None
    if not plain:
        prompt = prompt_for_background(request, settings, seed, report)
        notices += prompt.notices
        timings |= prompt.timings

    # 4. The new background under the kept layer, at the canvas's full size
    if plain:
        candidates = paint_plain(request, options, subject, seed)
    else:
        seeds = [(seed + k) % 2**32 for k in range(request.num_candidates)]
        candidates = paint_generated(request, settings, subject, prompt.prompt.prompt, seeds, fast_preset, report,
                                     should_cancel)
    notices += candidates.notices
    timings |= candidates.timings

    # 5. The post-hoc safety check of every output, in seed order, plain ones too (a cutout of the
    # person's own photo can be what a deployment's minimum forbids): note, blur or withhold it
    start = time.perf_counter()
    checked = output_check.check_outputs(candidates.images, candidates.seeds, options.checker, detector)
    notices += checked.notices
    timings["check"] = time.perf_counter() - start
    record = SafetyRecord(
        preset=safety.PRESET_LABELS[request.safety] if not plain else "none (no diffusion)",
        warmup=candidates.safety.sld_warmup_steps if candidates.safety else None,
        concept=candidates.concept, checker=options.checker, checks=checked.checks)

    # 6. Score each delivered candidate (seam, light) and order them best first; each keeps its own
    # seed (a plain background gives one image, and nothing to compare it with)
    start = time.perf_counter()
    weight = subject.layer.repaint
    if plain:
        scores, order = [], list(range(len(checked.images)))
    else:
        scores = ranking.score_candidates(subject.photo, checked.images, 1.0 - weight)
        order = ranking.best_first(scores)
        timings["ranking"] = time.perf_counter() - start

    # 7. The result, best first
    result = EditResult(
        images=[checked.images[i] for i in order], seeds=[checked.seeds[i] for i in order],
        prompt=prompt.prompt.prompt if prompt else "", prompt_tokens=prompt.prompt.tokens if prompt else 0,
        prompt_2=candidates.prompt_2, prompt_2_tokens=candidates.prompt_2_tokens, mood=prompt.mood if prompt else "",
        negative_prompt=candidates.negative_prompt, mask=weight,
        scores=[scores[i].total for i in order] if scores else [], timings=timings, notices=notices,
        safety=record, background=options.background.describe(),
        canvas=dataclasses.asdict(options.frame) if options.frame.extends else None)

    # 8. Save, with the parameters that reproduce each image and the check it passed
    if save:
        report("save", 0, 0, None)
        start = time.perf_counter()
        result.paths, renamed = outputs.save_outputs(
            result, request, size=candidates.size, model=settings.sdxl_model, canvas_text=options.frame.describe(),
            out=out, folder=settings.output_dir)
        result.notices += renamed
        result.timings["save"] = time.perf_counter() - start
    return result


def cut_subject(request: EditRequest, settings: Settings, frame: canvas.Frame,
                predictor: "masking.MaskPredictor | None" = None) -> SubjectOnCanvas:
    """Step 2: the mask is made on the photo (clicks and masks are in its coordinates), then placed on
    the canvas, where everything outside the photo joins the region to repaint."""
    layer, notices = build_mask(request, settings, predictor, outpaint=frame.extends)
    return SubjectOnCanvas(photo=canvas.extend_photo(request.image, frame), layer=canvas.place_layer(layer, frame),
                           notices=notices)


def prompt_for_background(request: EditRequest, settings: Settings, seed: int,
                          report: ProgressFn) -> BackgroundPrompt:
    """Step 3: the request's prompt, or one Llama 2 writes from the keyword and the mood (LLaVA reads the
    mood from the photo unless the request gives it). Cheap next to diffusion, but may wait on Ollama."""
    tokenizers = prompting.sdxl_tokenizers(settings)
    client = None
    mood = (request.mood or "").strip()
    notices: list[str] = []
    timings: dict[str, float] = {}
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
    timings["prompt"] = time.perf_counter() - start
    return BackgroundPrompt(mood=mood, prompt=prompt, notices=notices + prompt.notices, timings=timings)


def paint_plain(request: EditRequest, options: ParsedOptions, subject: SubjectOnCanvas, seed: int) -> Candidates:
    """Step 4 for a plain background: made from the photo alone, one image, no model loaded."""
    notices = []
    if request.num_candidates > 1:
        notices.append(f"a {options.background.kind} background gives one image, not {request.num_candidates}")
    start = time.perf_counter()
    image = backgrounds.render(options.background, subject.photo, subject.layer, options.frame)
    # The seed names the output (and its file) as for generated ones; nothing random used it.
    return Candidates(images=[image], seeds=[seed if request.seed is not None else 0], size=image.size,
                      notices=notices, timings={"composite": time.perf_counter() - start})


def paint_generated(request: EditRequest, settings: Settings, subject: SubjectOnCanvas, prompt: str,
                    seeds: list[int], fast_preset: "FastPreset | None", report: ProgressFn,
                    should_cancel: Callable[[], bool] | None) -> Candidates:
    """Step 4 for a generated background: SDXL (with erased encoders and SLD) paints the repaint region
    at the working size, and each image is composited onto the photo at the canvas's full size."""
    from pipelines.diffusion import blending, safety, sdxl_models
    from pipelines.diffusion.erasure import with_erased_encoders
    from pipelines.diffusion.few_step import use_fast

    notices: list[str] = []
    timings: dict[str, float] = {}

    # 4a. Fetch SDXL if it is not here yet (bytes as progress), make room on the GPU (Ollama's models
    # may hold it), load SDXL (cached), swap in erased encoders
    downloads.sdxl_folder(settings, on_progress=lambda done, total: report("download", done, total, None))
    report("load", 0, 0, None)
    start = time.perf_counter()
    working = images.to_working(subject.photo, settings.working_pixels)
    notices += gpu_room.make_room_for_edit(settings, working.size, sld=request.safety != "off")
    components = sdxl_models.load_sdxl_from_settings(settings)
    notices += use_fast(components, fast_preset, settings.lora_dir)  # fuses, or restores the original UNet
    components, erased_notices = with_erased_encoders(components, request.erased, settings.erased_dir)
    notices += erased_notices
    timings["load"] = time.perf_counter() - start

    # 4b. Blended latent diffusion at the working size (on a canvas, the new area starts from the
    # photo's reflected border: outpainting)
    start = time.perf_counter()
    # What diffusion repaints (for a matte, its band too): only a generated background needs it.
    mask = compositing.diffusion_mask(subject.layer, feather=request.feather)
    working_mask = images.resize_mask(mask, working.size)
    negative = request.negative_prompt if request.negative_prompt is not None else prompting.default_negative_prompt()
    # seed 001: the second encoder (OpenCLIP bigG) reads the scene, then the quality words that fit
    quality = request.prompt_2 if request.prompt_2 is not None else prompting.quality_words()
    second = prompting.second_prompt(prompt, quality, (components.tokenizer, components.tokenizer_2))
    preset = safety.get_preset(request.safety)
    # Under a deployment minimum the default concept stays; the person may only add to it.
    concept = safety.resolve_concept(request.sld_concept, settings.min_safety) if preset else None
    try:
        blended = blending.blend(
            components, working, working_mask, prompt, prompt_2=second.prompt,
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

    # 4c. Back to full size, compositing the decoded images once through the edge (matte, feather
    # or hard): the solid kept region is the original photo, byte for byte
    start = time.perf_counter()
    finals = compositing.composite_all(subject.photo, blended.decoded, subject.layer)
    timings["composite"] = time.perf_counter() - start
    return Candidates(images=finals, seeds=list(blended.seeds), size=working.size, notices=notices, timings=timings,
                      prompt_2=second.prompt, prompt_2_tokens=second.tokens, negative_prompt=negative,
                      concept=concept, safety=blended.safety)
