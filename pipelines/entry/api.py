"""The work behind the endpoints programs call: `/edit`, `/mask` and `/prompt`, without Gradio.

`app.py` serves them (`register_api`) as Gradio API endpoints, and as MCP tools with `--mcp`: there
live the typed signatures (`/edit`'s made from `EditRequest`'s options) and the docstrings a program
or an agent reads, and uploaded files arrive as paths in Gradio's cache. Here those values, named like
the options of `python -m pipelines edit`, become the same typed calls the page makes on its `Workbench`:

    edit(studio, photo, ...)    -> (EditResult, record)   record = `edit --json`'s, `outputs.result_record`
    mask(studio, photo, ...)    -> (mask image, record)   white = repaint, as `--mask` reads it
    prompt(studio, ...)         -> record                 the SDXL prompt and its token count

The request's values are checked once, by `editing.validate_request` inside `run_edit` (the
deployment's safety minimum included); only what exists nowhere else (the points' text, a mask given
together with points) is checked here. Errors are one-line `ValueError`s, shortened by `app.py`.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipelines import images, outputs
from pipelines.entry import page
from pipelines.masks import masking
from pipelines.composite.backgrounds import picture_path
from pipelines.entry.batch import parse_points
from pipelines.masks.subject import find_subject
from pipelines.types import EditOption, EditRequest, EditResult, edit_option, edit_options
from pipelines.entry.workbench import Workbench


def option_default(option: EditOption) -> Any:
    """What `/edit` shows as an option's default: the request's, or "" / None where empty means
    "decided later" (the option's `unset`: the LLM writes the prompt, this server's minimum safety, ...)."""
    if option.unset is None:
        return option.default
    return "" if option.kind is str else None


def edit(studio: Workbench, photo: str, *, points: str = "", mask: str | None = None, session: str,
         background_picture: str | None = None, subject: str = "", **options: Any) -> tuple[EditResult, dict]:
    """Run one edit as `python -m pipelines edit` would, on the page's shared models and GPU.

    Args:
        studio: the page's `Workbench` (shared SAM predictor, cancel flags).
        photo: path of the photo file.
        points: clicks as `X,Y[,L];X,Y[,L]` in photo pixels (L: 1 subject, the default; 0 not subject).
        mask: path of a mask image (white = repaint), instead of points; None to use the points.
        session: who asked (the caller's Gradio session); `studio.cancel(session)` stops the edit.
        background_picture: path of an uploaded picture to use as the background (overrides `background`).
        subject: "auto" = the subject model finds the subject (no points, no mask); "" = points or mask.
        options: the edit's options by their short names (`types.edit_options`: `steps`, `guidance`,
            `keyword`, ...), as the command line's flags; one left out, None or "" takes its default,
            and `safety` left empty is the lowest this deployment allows (`Settings.min_safety`).

    Returns:
        (the result, its record as `edit --json` prints it).

    Raises:
        ValueError: bad input (one line). blending.Cancelled, blending.GpuOutOfMemory, RuntimeError:
        the edit could not run.
    """
    settings = studio.settings
    known = {option.name: option for option in edit_options()}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for name, option in known.items():
        value = options.get(name)
        if value is None or value == "":
            value = settings.min_safety if option.field == "safety" else option.default
        values[option.field] = value
    image = images.load_image(photo, settings.max_image_pixels)
    clicks = parse_points(points or "")
    auto_subject = _auto_subject(subject)
    if mask is not None and clicks:
        raise ValueError("give points or a mask, not both")
    if background_picture is not None:
        values["background"] = background_picture
    elif picture_path(values["background"]) is not None:
        # A server path would let a caller read any image the server can (another person's result).
        raise ValueError("a picture background comes as the background_picture file, not a path")
    request = EditRequest(
        image=image, points=clicks, mask=images.load_mask(mask, image.size) if mask is not None else None,
        auto_subject=auto_subject, **values)
    result = studio.edit(request, session)
    return result, outputs.result_record(result, request)


def _auto_subject(subject: str) -> bool:
    if (subject or "") not in ("", "auto"):
        raise ValueError(f"subject must be 'auto' or empty, got {subject!r}")
    return subject == "auto"


def mask(studio: Workbench, photo: str, *, points: str, candidate: int, grow: int,
         subject: str = "") -> tuple[Image.Image, dict]:
    """The mask the clicks make, as the PNG `/edit`'s `mask` (and `--mask`) reads back.

    Args:
        studio: the page's `Workbench` (its SAM predictor, or GrabCut without one).
        photo: path of the photo file.
        points: clicks as `X,Y[,L];X,Y[,L]` in photo pixels.
        candidate: which of SAM's three masks, 0 = the best-scoring; without SAM, 0 = the subject
            model's, 1 = GrabCut alone.
        grow: grow (>0) or shrink (<0) the subject by this many pixels.
        subject: "auto" = no points: the subject model finds the subject; "" = the points.

    Returns:
        (mode "L" image at the photo's size, 255 = repaint (the background), 0 = kept (the subject);
        {"scores": SAM's predicted IoU of its three candidates, best first (0 for GrabCut),
        "method": "sam", "subject" or "grabcut", "candidate": the one drawn, "notices": fallbacks}).
    """
    image = images.load_image(photo, studio.settings.max_image_pixels)
    edit_option("mask_candidate").check(candidate)
    clicks = parse_points(points or "")
    if _auto_subject(subject):
        if clicks:
            raise ValueError("the automatic subject takes no points: give one or the other")
        model, notices = studio.subject_model()
        if model is None:
            raise ValueError(f"the automatic subject needs a subject model; {notices[0]}")
        repaint = masking.refine_mask(find_subject(image, model), grow=grow)
        record = {"scores": [0.0], "method": "subject", "candidate": 0, "notices": notices}
        return page.mask_png(repaint), record
    predictor, notices = studio.predictor()
    model = studio.subject_model(download=False)[0] if predictor is None else None
    prediction = masking.predict_masks(image, clicks, predictor, subject_model=model)
    repaint = masking.refine_mask(prediction.masks[candidate], grow=grow)
    record = {"scores": [round(float(s), 4) for s in prediction.scores], "method": prediction.method,
              "candidate": candidate, "notices": notices + [n for n in prediction.notices if n not in notices]}
    return page.mask_png(repaint), record


def prompt(studio: Workbench, *, keyword: str, mood: str, photo: str | None) -> dict:
    """The SDXL prompt Llama 2 writes from a keyword and a mood (LLaVA's, from the photo, when no
    mood is given), cut to SDXL's 77 CLIP tokens.

    Returns:
        {"prompt": the text SDXL would receive, "prompt_tokens": its CLIP tokens with BOS and EOS,
        "mood": the mood used, "source": "llm" or "template" (the fallback), "notices": fallbacks, cuts}.
    """
    notices: list[str] = []
    mood = (mood or "").strip()
    if not mood and photo is not None:
        image = images.load_image(photo, studio.settings.max_image_pixels)
        # As on the page: the photo is remembered, so an /edit or /mask on it finds SAM's embedding.
        read = studio.mood(studio.add_photo(image))
        mood, notices = read.mood, list(read.notices)
    written = studio.write_prompt(keyword or "", mood)
    return {"prompt": written.prompt, "prompt_tokens": written.tokens, "mood": mood, "source": written.source,
            "notices": notices + written.notices}
