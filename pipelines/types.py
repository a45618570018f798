"""Typed values passed between stages: a request goes in, a result comes out.

Mask convention, used by every stage: a mask handed to diffusion is a float32 array of shape
(H, W) with values in [0, 1] where **1 (white) means "repaint"** and 0 means "keep exactly".
By default the region to repaint is the background, i.e. everything that is not the subject.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.settings import EDGE_MODES, FAST_PRESET_NAMES, PLACES, SAFETY_LEVELS, SCHEDULERS

if TYPE_CHECKING:  # the command line reads the options without loading numpy and Pillow
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class ClickPoint:
    """A click on the photo, in the photo's displayed (EXIF-rotated) pixel coordinates.

    Attributes:
        x: column, 0 at the left edge.
        y: row, 0 at the top edge.
        label: 1 = on the subject, 0 = not on the subject (as SAM's `point_labels`).
    """

    x: int
    y: int
    label: int = 1

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"point label must be 1 (subject) or 0 (not subject), got {self.label}")


def option_field(default: Any, help: str, *, name: str | None = None, choices: tuple[str, ...] | None = None,
            range: tuple[float | None, float | None] | None = None, label: str | None = None,
            slider: tuple[float, float, float] | None = None, unset: str | None = None):
    """An edit option: one field of `EditRequest` and everything an entry point needs to offer it.

    Args:
        default: the value when not given (None for "decided later": random seed, LLM prompt, ...).
        help: one line, read by `--help`, the API docs and the MCP tool description.
        name: the short name the command line (`--NAME`), `/edit` and the batch columns use; default
            the field's name. The field's own (diffusers) name is accepted as an alias where the two differ.
        choices: the accepted values (checked by `editing.validate_request`).
        range: (lowest, highest) accepted, either None for no bound (checked by `validate_request`).
        label: how a message names the option ("unknown safety level ..."); default: the name, spaced.
        slider: the page's slider (minimum, maximum, step), narrower than `range` where the page
            offers the useful part only.
        unset: what an empty value means (`/edit`'s docs; the field's default is None).
    """
    return field(default=default, metadata={
        "option": True, "help": help, "name": name, "choices": choices, "range": range, "label": label,
        "slider": slider, "unset": unset})


def _input(reason: str, **kwargs: Any):
    """A field that is not an option: what the edit is made on, which each entry point reads its own way."""
    return field(**kwargs, metadata={"option": False, "reason": reason})


@dataclass
class EditRequest:
    """Everything one edit needs: `points`, a chosen `subject`, a repaint `mask` or `auto_subject` says where.

    The one definition of an edit's options: each option field's metadata (`option_field`) makes the
    command line's `edit` and `batch` flags, `/edit`'s parameters and docs, the batch manifest's
    columns and the page's defaults, choices and slider ranges (`edit_options`). A new option is a new
    field here. The fields' order is `/edit`'s parameter order.
    """

    image: Image.Image = _input("the photo: a path on the command line and in the manifest, a file in /edit")
    points: list[ClickPoint] = _input(
        "clicks: --point X,Y[,L] (repeated), the 'X,Y[,L];...' text of /edit and the manifest",
        default_factory=list)
    mask: np.ndarray | None = _input("a mask image file (--mask, /edit's mask, the manifest's mask)", default=None)
    subject: np.ndarray | None = _input("the subject as chosen on the page (clicks, candidates, brush)", default=None)
    auto_subject: bool = _input("no clicks: the subject model finds the subject (--subject auto, /edit's subject, "
                                "batch rows without points or mask)", default=False)
    keyword: str = option_field("", "what the new background should be, any language, e.g. \"forest\" or \"비 오는 밤거리\"")
    mood: str | None = option_field(None, "mood keywords for the prompt, e.g. \"calm, warm\"",
                               unset="LLaVA reads them from the photo")
    prompt: str | None = option_field(None, "the exact SDXL prompt", unset="Llama 2 writes it from keyword and mood")
    negative_prompt: str | None = option_field(None, "what to avoid", unset="Backdrop's default negative prompt "
                                          "(prompts/negative_prompt.txt)")
    safety: str = option_field("off", "Safe Latent Diffusion preset", choices=SAFETY_LEVELS, label="safety level",
                          unset="the lowest this server allows")
    erased: str | None = option_field(None, "name of concept-erased text encoders to use", unset="none")
    num_inference_steps: int = option_field(30, "diffusion steps", name="steps", range=(1, 200), slider=(1, 100, 1))
    guidance_scale: float = option_field(7.5, "classifier-free guidance scale (at least 1 with safety on)",
                                    name="guidance", range=(0, 50), slider=(0, 20, 0.5))
    strength: float = option_field(1.0, "1.0 repaints from pure noise; lower keeps more of the old background's layout",
                              slider=(0.05, 1.0, 0.05))  # (0, 1]: checked by validate_request (open below)
    seed: int | None = option_field(None, "random seed of the first image (the others use seed+1, ...)",
                               range=(0, 2**32 - 1), unset="random (reported)")
    num_candidates: int = option_field(1, "how many images to make; they come back best-scoring first",
                                  name="candidates", range=(1, 8), slider=(1, 4, 1))
    edge: str = option_field("matte", "how the kept part meets the new background (matte: soft where the photo is soft, "
                        "the old background's colour taken out; feather: a soft ramp outside the subject; hard: a binary cut)",
                        choices=EDGE_MODES)
    grow: int = option_field(0, "grow (>0) or shrink (<0) the subject by this many pixels", slider=(-32, 32, 1))
    feather: int = option_field(4, "soft seam width in pixels (feather edge; with matte, the ramp diffusion repaints)",
                           range=(0, None), slider=(0, 32, 1))
    edit_subject: bool = option_field(False, "repaint the subject instead of the background")
    background: str = option_field(
        "generate", "generate (SDXL), transparent (RGBA PNG), a colour (\"white\", \"#1e90ff\", a CSS name), a "
        "picture file (scaled to cover) or blur / blur:RADIUS (the photo's own background); the plain kinds need no "
        "model, prompt or keyword")
    canvas: str | None = option_field(None, "a larger frame, \"WxH\" or a ratio \"16:9\" (the smallest of that shape "
                                 "holding the photo); the photo is not scaled, the new area is painted too",
                                 unset="the photo's own size")
    place: str = option_field("center", "where the photo sits on the canvas", choices=PLACES)
    fast: str | None = option_field(None, "a few-step LoRA preset, which sets steps, guidance and sampler",
                               choices=FAST_PRESET_NAMES, label="fast preset", unset="the standard steps")
    prompt_2: str | None = option_field(None, "quality words the second text encoder reads after the scene",
                                   unset="Backdrop's default quality words")
    sld_concept: str | None = option_field(None, "what Safe Latent Diffusion steers away from",
                                      unset="the paper's concept (prompts/sld_concept.txt)")
    scheduler: str = option_field("euler", "the sampler", choices=SCHEDULERS)
    mask_candidate: int | None = option_field(
        None, "which mask the clicks give: SAM's, 0 = the best-scoring; without SAM 0 = the subject model's, "
        "1 = GrabCut alone", range=(0, 2), unset="the best-scoring")


@dataclass(frozen=True)
class EditOption:
    """One option of `EditRequest` as the entry points offer it (`edit_options`)."""

    field: str  # the EditRequest field, diffusers' name where diffusers has one
    name: str  # the short name: --NAME, /edit's NAME, the manifest's NAME column
    kind: type  # str, int, float or bool: what a value is read as
    optional: bool  # None is a valid value (the default decides later)
    default: Any
    help: str
    choices: tuple[str, ...] | None
    range: tuple[float | None, float | None] | None
    label: str  # how messages name it
    slider: tuple[float, float, float] | None
    unset: str | None

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other accepted spellings: the field's name where it differs from the short name."""
        return (self.field,) if self.field != self.name else ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The one-line help with what is accepted and what empty means (the API's docs)."""
        text = self.help
        if self.choices:
            text += f": {', '.join(self.choices)}"
        if self.range:
            low, high = self.range
            text += f"; {low} to {high}" if high is not None else f"; at least {low}"
        if self.unset:
            text += f"; empty = {self.unset}"
        elif self.kind is not bool and self.default != "":
            text += f"; default {self.default}"
        return text + "."

    def parse(self, text: str) -> Any:
        """A value as text (a CSV cell, a flag) as this option's type; one-line ValueError when it is not."""
        text = text.strip()
        if self.kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{self.name}={text!r} is not yes or no")
        if self.kind is str:
            return text
        try:
            return self.kind(text)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise ValueError(f"{self.name}={text!r} is not {what}") from None

    def check(self, value: Any) -> None:
        """Raise a one-line ValueError unless `value` is within the choices and range (None passes)."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ValueError(f"unknown {self.label} {value!r} (choose {', '.join(self.choices)})")
        if self.range:
            low, high = self.range
            if high is None and value < low:
                raise ValueError(f"{self.label} must be {low} or more, got {value}")
            if high is not None and not low <= value <= high:
                raise ValueError(f"{self.label} must be between {low} and {high}, got {value}")


_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


def edit_options(request_type: type = EditRequest) -> tuple[EditOption, ...]:
    """The options of `request_type` (EditRequest, or a copy with more fields), in field order."""
    return _options(request_type)


@functools.cache
def _options(request_type: type) -> tuple[EditOption, ...]:
    options = []
    for f in dataclasses.fields(request_type):
        meta = f.metadata
        if not meta.get("option"):
            continue
        names = [part.strip() for part in str(f.type).split("|")]
        kinds = [n for n in names if n != "None"]
        if len(kinds) != 1 or kinds[0] not in _KINDS:
            raise TypeError(f"EditRequest.{f.name}: an option is one of str, int, float, bool (or that | None)")
        name = meta["name"] or f.name
        options.append(EditOption(
            field=f.name, name=name, kind=_KINDS[kinds[0]], optional="None" in names, default=f.default,
            help=meta["help"], choices=meta["choices"], range=meta["range"],
            label=meta["label"] or name.replace("_", " "), slider=meta["slider"], unset=meta["unset"]))
    return tuple(options)


def edit_option(name: str) -> EditOption:
    """The option of EditRequest named `name` (its field name or short name)."""
    for option in edit_options():
        if name in (option.field, option.name):
            return option
    raise KeyError(name)


def check_schedule(num_inference_steps: int, strength: float) -> int:
    """The steps that run, int(steps * strength) as in diffusers (`blending.blend`); a one-line ValueError when none would."""
    executed = min(int(num_inference_steps * strength), num_inference_steps)
    if executed < 1:
        raise ValueError(f"strength {strength} is too low for {num_inference_steps} steps: no step would run")
    return executed


def not_options(request_type: type = EditRequest) -> dict[str, str]:
    """The request's fields that are not options -> why (each entry point reads them its own way)."""
    return {f.name: f.metadata["reason"] for f in dataclasses.fields(request_type) if not f.metadata.get("option")}


@dataclass(frozen=True)
class SafetyCheck:
    """The post-hoc check of one output (`output_check.check_image`)."""

    seed: int  # the output's seed
    flagged: bool  # the detector found at least one exposed class (`output_check.FLAGGED_LABELS`)
    labels: tuple[str, ...] = ()  # the flagged nudenet classes, sorted, each once
    action: str = "none"  # what was done: "none", "noted", "blurred" or "withheld"


@dataclass
class SafetyRecord:
    """What safety an edit ran with: the `safety` object of `--json`."""

    preset: str  # "Off" or the paper's name, e.g. "Hyp-Strong"
    warmup: int | None  # the effective warm-up δ at this step count; None when SLD is off
    concept: str | None  # the SLD concept text as encoded; None when SLD is off
    checker: str  # the checker mode: off, note, blur, block ("unavailable": note without nudenet)
    checks: list[SafetyCheck] = field(default_factory=list)  # one per output, withheld ones included


@dataclass
class EditResult:
    """What one edit produced."""

    images: list[Image.Image]  # full-size composites (canvas-size; RGBA for transparent), one per candidate
    seeds: list[int]  # one per image; images and seeds are ordered best score first
    prompt: str  # the exact prompt SDXL received ("" for a plain background)
    prompt_tokens: int  # its CLIP token count, BOS and EOS included (<= 77; 0 for a plain background)
    prompt_2: str  # what the second encoder received: the prompt, then the quality words that fit ("" when plain)
    prompt_2_tokens: int  # its token count as tokenizer_2 reads it (weight marks left out, <= 77; 0 when plain)
    mood: str
    negative_prompt: str
    mask: np.ndarray  # the new background's weight in the composite, float32 (H, W) in [0, 1]; 0 = photo kept exactly
    scores: list[float] = field(default_factory=list)  # one per image, ranking.Score.total (0 = as natural as the photo)
    paths: list[Path] = field(default_factory=list)  # saved PNGs, one per image
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notices: list[str] = field(default_factory=list)  # fallbacks, cuts, things the user should know
    safety: SafetyRecord | None = None  # preset, concept and the check of every output
    background: str = "generate"  # the background as made (backgrounds.Background.describe)
    canvas: dict | None = None  # {width, height, left, top, place}: the frame and the photo on it; None: no larger canvas
