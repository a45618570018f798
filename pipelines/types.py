"""Typed values passed between stages: a request goes in, a result comes out.

Mask convention, used by every stage: a mask handed to diffusion is a float32 array of shape
(H, W) with values in [0, 1] where **1 (white) means "repaint"** and 0 means "keep exactly".
By default the region to repaint is the background, i.e. everything that is not the subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class EditRequest:
    """Everything one edit needs: `points`, a chosen `subject`, a repaint `mask` or `auto_subject` says where."""

    image: Image.Image  # the photo, already loaded upright and RGB (images.load_image)
    points: list[ClickPoint] = field(default_factory=list)  # clicks on the subject / not subject
    mask: np.ndarray | None = None  # full-size (H, W) float32 in [0, 1], 1 = repaint; overrides points
    subject: np.ndarray | None = None  # (H, W) bool, the subject as already chosen (the page); skips SAM
    auto_subject: bool = False  # no clicks: the subject model finds the subject (BACKDROP_SUBJECT_MODEL, pipelines/subject.py)
    mask_candidate: int | None = None  # which of SAM's three candidates (None: best-scoring)
    grow: int = 0  # grow (>0) or shrink (<0) the subject by this many pixels before repainting
    feather: int = 4  # soft seam width in pixels (feather edge), or extra matting band width (matte edge)
    edge: str = "matte"  # matte (alpha matting in a band), feather (ramp outside the subject) or hard
    edit_subject: bool = False  # repaint the subject instead of the background
    background: str = "generate"  # generate, transparent, a colour, a picture file, blur[:RADIUS] (backgrounds.py)
    canvas: str | None = None  # a larger frame: WxH, or a ratio W:H (the smallest of that shape); None: the photo's
    place: str = "center"  # where the photo sits on the canvas: center, left, right, top, bottom
    keyword: str = ""  # the user's background keyword, any language
    mood: str | None = None  # mood keywords; None: ask the vision model
    prompt: str | None = None  # the SDXL prompt; None: ask the text model
    prompt_2: str | None = None  # quality words the second encoder reads after the scene; None: the default
    negative_prompt: str | None = None  # None: the default negative prompt
    safety: str = "off"  # off, weak, medium, strong, max (SLD presets)
    sld_concept: str | None = None  # unsafe-concept text for SLD; None: the paper's default
    erased: str | None = None  # name of an erased text-encoder pair, or None
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    strength: float = 1.0  # 1.0 repaints from pure noise; lower keeps more of the old background
    seed: int | None = None  # None: a random seed, reported in the result
    num_candidates: int = 1  # images per request, seeds seed, seed+1, ...
    scheduler: str = "euler"  # euler or dpmpp_2m
    fast: str | None = None  # a few-step LoRA preset (few_step.FAST_PRESETS); sets steps, guidance and sampler


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
