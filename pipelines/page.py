"""What the page shows and sends, as plain Python: its session state, the Generate form, previews.

`app.py` lays out the Gradio widgets and wires events; every value a handler needs to compute
lives here, typed and without Gradio, so it can be read and tested alone:

    PageState      one browser session: which photo, its clicks, SAM's current prediction
    GenerateForm   the values of the widgets Generate reads, one field per widget
    form.to_request(state, image, mood) -> EditRequest   (checked by `editing.validate_request`)
    preview(...)   the clickable photo with the subject tinted and the clicks drawn
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from pipelines import masking
from pipelines.safety import PRESET_LABELS, get_preset
from pipelines.settings import SAFETY_LEVELS
from pipelines.types import ClickPoint, EditRequest

DISPLAY_SIDE = 1280  # the longest side of the clickable preview; clicks are mapped back to the photo


@dataclass(frozen=True)
class PageState:
    """One browser session's photo and clicks (Gradio keeps a deep copy per session).

    Attributes:
        key: the photo's key in `Studio` (content hash), None before an upload.
        points: the clicks so far, in photo pixels.
        prediction: SAM's (or GrabCut's) masks for those clicks, None before the first positive one.
        display: the photo scaled to at most DISPLAY_SIDE, as shown on the page.
    """

    key: str | None = None
    points: tuple[ClickPoint, ...] = ()
    prediction: masking.MaskPrediction | None = None
    display: Image.Image | None = None

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


@dataclass(frozen=True)
class GenerateForm:
    """The widget values Generate reads; `app.py` has a widget of the same name for each field."""

    mood: str = ""  # LLaVA's mood, editable; empty: the photo's mood from the upload
    keyword: str = ""  # the new background, any language
    prompt: str = ""  # empty: written by Llama 2 from the keyword and mood
    safety: int = 0  # slider position in SAFETY_LEVELS
    concept: str = ""  # SLD's unsafe concept; empty: the paper's default
    erased: str | None = "none"  # an erased encoder's name, or "none"
    steps: int = 30
    guidance: float = 7.5
    strength: float = 1.0
    seed: int | None = 0
    random_seed: bool = True
    candidates: int = 1
    negative: str | None = None  # the negative prompt
    quality: str | None = None  # second-encoder prompt (quality words)
    scheduler: str = "euler"
    candidate: int | None = 0  # which of SAM's masks is chosen
    grow: int = 0
    feather: int = 4
    edit: str = "background"  # "background" or "subject": what is repainted

    def to_request(self, state: PageState, image: Image.Image, photo_mood: str | None = None) -> EditRequest:
        """The edit this form asks for, on the session's photo with its chosen mask.

        Args:
            state: the session, with a prediction (the page checks that a subject was clicked).
            image: the session's full-size photo.
            photo_mood: the mood LLaVA read at upload, used when neither a mood nor a prompt is typed.
        """
        mood, prompt = (self.mood or "").strip(), (self.prompt or "").strip()
        if not mood and not prompt:
            mood = photo_mood or ""
        return EditRequest(
            image=image, points=list(state.points), subject=state.prediction.masks[self.candidate or 0],
            grow=int(self.grow), feather=int(self.feather), edit_subject=(self.edit == "subject"),
            keyword=self.keyword or "", mood=mood, prompt=prompt or None, prompt_2=self.quality,
            negative_prompt=self.negative, safety=SAFETY_LEVELS[int(self.safety)],
            sld_concept=(self.concept or "").strip() or None,
            erased=None if self.erased in (None, "none") else self.erased,
            num_inference_steps=int(self.steps), guidance_scale=float(self.guidance),
            strength=float(self.strength), seed=None if self.random_seed else int(self.seed or 0),
            num_candidates=int(self.candidates), scheduler=self.scheduler)


def preview(state: PageState, image_width: int, candidate: int | None = 0, grow: int = 0) -> Image.Image:
    """The clickable preview: the photo at display size, the subject (after grow / shrink) tinted,
    points drawn. Whether the subject or the background is repainted, the tinted region is the
    subject; the feather only softens the seam in the result."""
    display = state.display
    if state.prediction is None:
        return display
    scale = display.width / image_width
    subject = masking.refine_mask(state.prediction.masks[candidate or 0], grow=int(grow)) < 0.5
    small = np.asarray(Image.fromarray(subject).resize(display.size, Image.Resampling.NEAREST))
    points = [ClickPoint(int(p.x * scale), int(p.y * scale), p.label) for p in state.points]
    return masking.overlay(display, small, points)


def candidate_choices(prediction: masking.MaskPrediction | None) -> list[tuple[str, int]]:
    """(label, index) for each mask the person can pick: SAM's three with scores, or GrabCut's one."""
    if prediction is None:
        return []
    if prediction.method != "sam":  # GrabCut gives one mask, not three ranked ones
        return [("GrabCut", 0)]
    return [(f"{i + 1} (score {s:.2f})", i) for i, s in enumerate(prediction.scores)]


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
