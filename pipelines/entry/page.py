"""What the page shows and sends, as plain Python: its session state, the Generate form, previews.

`app_layout.py` lays out the Gradio widgets, `app_handlers.py` answers their events and `app.py`
wires them; every value a handler needs to compute lives here, typed and without Gradio, so it can
be read and tested alone:

    PageState      one browser session: which photo, its clicks, SAM's current prediction, an
                   uploaded mask and the brush strokes; `state.subject(candidate)` is the subject they make
    Stroke         one brush stroke ("add to subject" / "remove from subject"), in photo pixels
    GenerateForm   the values of the widgets Generate reads, one field per widget
    form.to_request(state, image, mood) -> EditRequest   (checked by `editing.validate_request`)
    preview(...)   the clickable photo with the subject tinted and the clicks drawn
    mask_png(...)  the mask an edit uses (white = repaint), as the PNG the page offers for download

The subject is built in one order everywhere: the base (SAM's chosen candidate, else the uploaded
mask, else nothing), then every brush stroke in the order drawn; grow / shrink, the feather and the
matte come after, in the edit. So strokes survive a new click: they are re-applied on top of each
new prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from pipelines.masks import masking
from pipelines.diffusion.safety import MIN_GUIDANCE_WITH_SLD, PRESET_LABELS, get_preset
from pipelines.settings import SAFETY_LEVELS
from pipelines.types import ClickPoint, EditRequest, edit_option

DISPLAY_SIDE = 1280  # the longest side of the clickable preview; clicks are mapped back to the photo
BRUSHES = {"add to subject": True, "remove from subject": False}  # the page's brushes: paints subject?
MAX_STROKE_POINTS = 10_000  # a stroke is a polyline; more points than this is not a mouse drag
BACKGROUNDS = ("generate", "transparent", "colour", "picture", "blur")  # the page's Background choice
CANVASES = ("original", "1:1", "4:5", "16:9", "9:16", "custom")  # the page's Canvas choice


@dataclass(frozen=True)
class Stroke:
    """One brush stroke on the photo.

    Attributes:
        points: the stroke's path, each (X, Y) in photo pixels (float), in the order drawn.
        width: the brush's diameter in photo pixels.
        add: True paints subject ("add to subject"), False paints not-subject ("remove from subject").
    """

    points: tuple[tuple[float, float], ...]
    width: float
    add: bool

    @classmethod
    def from_page(cls, text: str, scale: float) -> Stroke:
        """A stroke as the page's brush sends it: JSON `{"brush": ..., "size": ..., "points": [[x, y], ...]}`
        with the size in display pixels and the points in display coordinates (0 at the left / top
        edge, so pixel i spans i..i+1); `scale` = photo width / display width.

        Raises:
            ValueError: not such a stroke (one line).
        """
        try:
            data = json.loads(text)
            brush, size = data["brush"], float(data["size"])
            # To pixel centres, as Pillow draws: photo pixel i spans i - 0.5 .. i + 0.5.
            points = tuple((float(x) * scale - 0.5, float(y) * scale - 0.5) for x, y in data["points"])
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError("the brush stroke could not be read") from err
        if brush not in BRUSHES:
            raise ValueError(f"unknown brush {brush!r} (choose {', '.join(BRUSHES)})")
        if not points or len(points) > MAX_STROKE_POINTS or not 0 < size <= DISPLAY_SIDE:
            raise ValueError("the brush stroke could not be read")
        return cls(points=points, width=size * scale, add=BRUSHES[brush])


def apply_strokes(subject: np.ndarray, strokes: tuple[Stroke, ...]) -> np.ndarray:
    """The subject after the brush strokes, each in order (a later stroke paints over an earlier one).

    Args:
        subject: (H, W) bool, True = subject.
        strokes: in the order drawn, in the subject's pixels.

    Returns:
        A new (H, W) bool array; pixels no stroke touched are the subject's own.
    """
    if not strokes:
        return subject
    height, width = subject.shape
    # One canvas for all strokes: 0 = untouched, 1 = added, 2 = removed; later strokes overwrite.
    paint = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(paint)
    for stroke in strokes:
        value, r = (1 if stroke.add else 2), stroke.width / 2
        if len(stroke.points) > 1:
            draw.line(stroke.points, fill=value, width=max(1, round(stroke.width)), joint="curve")
        for x, y in (stroke.points[0], stroke.points[-1]):  # round caps (and a click is a dot)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
    paint = np.asarray(paint)
    return (subject | (paint == 1)) & (paint != 2)


@dataclass(frozen=True)
class PageState:
    """One browser session's photo and clicks (Gradio keeps a deep copy per session).

    Attributes:
        key: the photo's key in `Workbench` (content hash), None before an upload.
        points: the clicks so far, in photo pixels.
        prediction: SAM's (or GrabCut's) masks for those clicks, None before the first positive one.
        display: the photo scaled to at most DISPLAY_SIDE, as shown on the page.
        uploaded: the subject from an uploaded mask, (H, W) bool; used while no click predicts one.
        strokes: the brush strokes, in the order drawn, re-applied on whatever the base subject is.
    """

    key: str | None = None
    points: tuple[ClickPoint, ...] = ()
    prediction: masking.MaskPrediction | None = None
    display: Image.Image | None = None
    uploaded: np.ndarray | None = None
    strokes: tuple[Stroke, ...] = ()

    @classmethod
    def for_photo(cls, key: str, image: Image.Image) -> PageState:
        display = image.copy()
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
        return cls(key=key, display=display)

    def click(self, image: Image.Image, index: tuple[int, int], subject: bool) -> tuple[ClickPoint, ...]:
        """The clicks after one more at `index` (X, Y in display pixels), mapped to the photo."""
        scale = image.width / self.display.width
        x, y = (int(v * scale) for v in index[:2])
        point = ClickPoint(min(x, image.width - 1), min(y, image.height - 1), 1 if subject else 0)
        return self.points + (point,)

    def with_prediction(self, points: tuple[ClickPoint, ...],
                        prediction: masking.MaskPrediction | None) -> PageState:
        return replace(self, points=tuple(points), prediction=prediction)

    @property
    def has_subject(self) -> bool:
        """Whether `subject` has a base (a SAM prediction or an uploaded mask); cheap, draws nothing."""
        return self.prediction is not None or self.uploaded is not None

    def subject(self, candidate: int | None = 0) -> np.ndarray | None:
        """The subject the edit keeps, (H, W) bool: the chosen SAM candidate (else the uploaded mask,
        else nothing) with the brush strokes on top; None while there is no base (strokes are kept
        for the next one)."""
        if self.prediction is not None:
            base = self.prediction.masks[candidate or 0]
        elif self.uploaded is not None:
            base = self.uploaded
        else:
            return None
        return apply_strokes(np.asarray(base, dtype=bool), self.strokes)


def slider(field: str) -> dict:
    """A slider's minimum, maximum, step and value for an `EditRequest` option, from its definition
    (`types.edit_options`: the option's `slider` range and default), as `gr.Slider(**slider(...))` takes them."""
    option = edit_option(field)
    low, high, step = option.slider
    return {"minimum": low, "maximum": high, "step": step, "value": option.default}


def choices(field: str) -> dict:
    """A choice widget's choices and value for an `EditRequest` option, from its definition."""
    option = edit_option(field)
    return {"choices": list(option.choices), "value": option.default}


def _default(field: str):
    return edit_option(field).default


@dataclass(frozen=True)
class GenerateForm:
    """The widget values Generate reads; `app_layout.Page` has a widget of the same name for each field.

    The page's names are its widgets' (`quality` is `prompt_2`, `edit` says what `edit_subject` does,
    `safety` is the slider's position); defaults that are a request's value come from `EditRequest`.
    """

    mood: str = ""  # LLaVA's mood, editable; empty: the photo's mood from the upload
    keyword: str = _default("keyword")  # the new background, any language
    prompt: str = ""  # empty: written by Llama 2 from the keyword and mood
    safety: int = 0  # slider position in SAFETY_LEVELS
    concept: str = ""  # SLD's unsafe concept; empty: the paper's default
    erased: str | None = "none"  # an erased encoder's name, or "none"
    steps: int = _default("num_inference_steps")
    guidance: float = _default("guidance_scale")
    strength: float = _default("strength")
    seed: int | None = 0
    random_seed: bool = True
    candidates: int = _default("num_candidates")
    negative: str | None = None  # the negative prompt
    quality: str | None = None  # second-encoder prompt (quality words)
    scheduler: str = _default("scheduler")
    candidate: int | None = 0  # which of SAM's masks is chosen
    grow: int = _default("grow")
    feather: int = _default("feather")
    edit: str = "background"  # "background" or "subject": what is repainted
    edge: str = _default("edge")  # compositing.EDGE_MODES: how the kept subject meets the new background
    fast: str = "off"  # a few-step LoRA preset (few_step.FAST_PRESETS), or "off"
    background: str = _default("background")  # one of BACKGROUNDS
    background_color: str = "#ffffff"  # for "colour": as the colour picker gives it (#rrggbb or rgba(...))
    background_picture: str | None = None  # for "picture": the uploaded file's path
    blur_radius: float = 0  # for "blur": the Gaussian sigma in pixels; 0 = from the photo's size
    canvas: str = "original"  # one of CANVASES
    canvas_size: str = ""  # for "custom": WxH
    place: str = _default("place")  # where the photo sits on a larger canvas (canvas.PLACES)

    def to_request(self, state: PageState, image: Image.Image, photo_mood: str | None = None) -> EditRequest:
        """The edit this form asks for, on the session's photo with its chosen mask.

        Args:
            state: the session, with a subject (the page checks that one was clicked or uploaded).
            image: the session's full-size photo.
            photo_mood: the mood LLaVA read at upload, used when neither a mood nor a prompt is typed.

        Raises:
            ValueError: a background or canvas choice that lacks its value (one line); the values
                themselves are checked by `editing.validate_request`.
        """
        mood, prompt = (self.mood or "").strip(), (self.prompt or "").strip()
        if not mood and not prompt:
            mood = photo_mood or ""
        return EditRequest(
            image=image, points=list(state.points), subject=state.subject(self.candidate),
            grow=int(self.grow), feather=int(self.feather), edge=self.edge, edit_subject=(self.edit == "subject"),
            keyword=self.keyword or "", mood=mood, prompt=prompt or None, prompt_2=self.quality,
            negative_prompt=self.negative, safety=SAFETY_LEVELS[int(self.safety)],
            sld_concept=(self.concept or "").strip() or None,
            erased=None if self.erased in (None, "none") else self.erased,
            num_inference_steps=int(self.steps), guidance_scale=float(self.guidance),
            strength=float(self.strength), seed=None if self.random_seed else int(self.seed or 0),
            num_candidates=int(self.candidates), scheduler=self.scheduler,
            fast=None if self.fast in (None, "off") else self.fast,
            background=self.background_value(), canvas=self.canvas_value(), place=self.place)

    @property
    def plain(self) -> bool:
        """A background made from pixels alone: no SDXL, no mood, no prompt."""
        return self.background != "generate"

    def background_value(self) -> str:
        """The Background choice as `--background` reads it."""
        if self.background == "colour":
            try:
                return "#{:02x}{:02x}{:02x}".format(*ImageColor.getrgb((self.background_color or "").strip())[:3])
            except ValueError as err:
                raise ValueError(f"unknown colour {self.background_color!r}") from err
        if self.background == "picture":
            if not self.background_picture:
                raise ValueError("upload a picture for the background")
            return self.background_picture
        if self.background == "blur":
            return f"blur:{float(self.blur_radius):g}" if self.blur_radius and self.blur_radius > 0 else "blur"
        return self.background

    def canvas_value(self) -> str | None:
        """The Canvas choice as `--canvas` reads it; None for the photo's own frame."""
        if self.canvas in (None, "original"):
            return None
        if self.canvas == "custom":
            if not (self.canvas_size or "").strip():
                raise ValueError("type the canvas size as WxH, e.g. 1920x1080")
            return self.canvas_size.strip()
        return self.canvas


def preview(state: PageState, image_width: int, candidate: int | None = 0, grow: int = 0) -> Image.Image:
    """The clickable preview: the photo at display size, the subject (after grow / shrink) tinted,
    points drawn. Whether the subject or the background is repainted, the tinted region is the
    subject; the feather only softens the seam in the result."""
    display = state.display
    chosen = state.subject(candidate)
    if chosen is None:
        return display
    scale = display.width / image_width
    subject = masking.refine_mask(chosen, grow=int(grow)) < 0.5
    small = np.asarray(Image.fromarray(subject).resize(display.size, Image.Resampling.NEAREST))
    points = [ClickPoint(int(p.x * scale), int(p.y * scale), p.label) for p in state.points]
    return masking.overlay(display, small, points)


def repaint_mask(state: PageState, candidate: int | None, grow: int, edit: str) -> np.ndarray | None:
    """The binary mask the edit repaints, float32 (H, W), 1 = repaint (before the feather and the
    matte soften its edge); None without a subject. Uploaded again as a mask, it gives this cut."""
    chosen = state.subject(candidate)
    if chosen is None:
        return None
    return masking.refine_mask(chosen, grow=int(grow), edit_subject=(edit == "subject"))


def mask_png(mask: np.ndarray) -> Image.Image:
    """A float32 (H, W) mask in [0, 1] as an 8-bit grey image: white = repaint, as `--mask` reads it."""
    return Image.fromarray(np.rint(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8), "L")


def uploaded_subject(mask: np.ndarray, invert: bool) -> np.ndarray:
    """The subject an uploaded mask gives: (H, W) bool, True = keep.

    Args:
        mask: float32 (H, W) in [0, 1] as `images.load_mask` reads it, white (1) = repaint.
        invert: the mask's white is the subject instead (cutouts, SAM, rembg).
    """
    repaint = mask >= 0.5  # as `editing.build_mask` cuts a given mask
    return repaint if invert else ~repaint


def captions(seeds: list[int], scores: list[float]) -> list[str]:
    """The gallery's caption per result, best first as the edit returns them: seed and score."""
    scores = list(scores) + [None] * (len(seeds) - len(scores))
    return [f"seed {seed}" + (f" · score {score:.3f}" if score is not None else "")
            for seed, score in zip(seeds, scores)]


def guidance_limits(position: int, guidance: float) -> tuple[float, float]:
    """(minimum, value) of the guidance slider under the safety slider's position: with a preset on,
    guidance below `MIN_GUIDANCE_WITH_SLD` would make SLD inert, so the minimum rises and the value with it."""
    if get_preset(SAFETY_LEVELS[int(position)]) is None:
        return 0.0, float(guidance)
    return MIN_GUIDANCE_WITH_SLD, max(float(guidance), MIN_GUIDANCE_WITH_SLD)


def found_prediction(subject: np.ndarray, notices: list[str]) -> masking.MaskPrediction:
    """"Find subject"'s mask as the session's prediction: the brush paints on it, and the next
    click hands it to SAM as the previous mask (`next_mask_input`), so clicks refine it.

    Args:
        subject: (H, W) bool from `subject.find_subject`, True = subject.
        notices: what the person should know (the model used, a fallback).
    """
    subject = np.asarray(subject, dtype=bool)
    logits = masking._to_low_res_logits(subject)
    return masking.MaskPrediction(masks=np.repeat(subject[None], 3, axis=0), scores=np.zeros(3, np.float32),
                                  low_res_logits=np.repeat(logits[None], 3, axis=0), method="subject",
                                  notices=list(notices), distinct=1)


def candidate_choices(prediction: masking.MaskPrediction | None) -> list[tuple[str, int]]:
    """(label, index) for each mask the person can pick: SAM's three with scores (one where its
    decoder gives one), or the fallback's by name (the subject model's and GrabCut alone)."""
    if prediction is None:
        return []
    if prediction.method != "sam":  # no scores to rank by: each says what it is
        names = prediction.names or ("GrabCut" if prediction.method == "grabcut" else "Subject model",)
        if len(names) == 1:
            return [(names[0], 0)]
        return [(f"{i + 1} ({name})", i) for i, name in enumerate(names)]
    return [(f"{i + 1} (score {s:.2f})", i) for i, s in enumerate(prediction.scores[:prediction.distinct])]


def notices_markdown(notices: list[str]) -> str:
    """A Markdown list of the notices, each once, in order."""
    return "\n".join(f"- {n}" for n in dict.fromkeys(notices)) if notices else ""


def safety_markdown(position: int) -> str:
    """What the safety slider's position means: the SLD preset and its numbers."""
    level = SAFETY_LEVELS[int(position)]
    preset = get_preset(level)
    if preset is None:
        return "**Off**: no safety guidance"
    return (f"**{PRESET_LABELS[level]}**: warm-up δ {preset.sld_warmup_steps} (of 50 steps), "
            f"s_S {preset.sld_guidance_scale:g}, λ {preset.sld_threshold:g}, "
            f"s_m {preset.sld_momentum_scale:g}, β_m {preset.sld_mom_beta:g}")
