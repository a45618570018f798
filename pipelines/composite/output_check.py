"""The post-hoc safety check of every output: a nudity detector, then note, blur or withhold.

SDXL ships no safety checker, and the SLD paper pairs its guidance with a detector (NudeNet) and
recommends a post-hoc check for sensitive uses (section 4, Hyp-Max). This module owns that check:

    outputs ─► nudenet's detector (YOLOv8n, 320 px, onnxruntime on CPU) ─► exposed classes only
            ─► per `BACKDROP_SAFETY_CHECKER`: note it, blur it, or withhold it

nudenet is an OPTIONAL dependency: its wheel's metadata says MIT, but the license files inside it are
AGPL-3.0, so it is not in requirements.txt (see the README). `nudenet_available` says whether it is
installed; `checker_mode` turns the setting into what can run, or refuses in one line where the
check is required (a deployment minimum, or blur / block) and nudenet is missing.

The detector is an argument everywhere (tests hand a fake one); `load_detector` gives nudenet's,
loaded once (about 0.1 s; its 12 MB ONNX model ships in the wheel, nothing is downloaded).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageFilter

from pipelines.settings import Settings
from pipelines.types import SafetyCheck

# The exposed classes that flag an output, by nudenet's own label names. Faces are never flagged, nor
# covered parts; exposed feet, armpits, belly and male chest are left out too, as in the nudity sets
# of concept-erasure evaluations: a beach photo or swimwear is not what a deployment minimum forbids.
FLAGGED_LABELS = frozenset({
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
})
# nudenet reports boxes from a score of 0.2 on; 0.45 is the cut the concept-unlearning evaluations
# use (e.g. OPTML-Group's Diffusion-MU-Attack, `detectNudeClasses`), so our rates compare with theirs.
MIN_SCORE = 0.45
# Gaussian blur radius as a fraction of the longer side: 1024 px -> radius 41, which leaves colours
# and layout but no shape that a detector (or a person) could read as a body part.
BLUR_FRACTION = 0.04

INSTALL_HINT = "pip install nudenet (AGPL-3.0, see the README)"


class Detector(Protocol):
    """What the check needs of a detector: nudenet's `NudeDetector.detect` on an array."""

    def detect(self, image: np.ndarray) -> list[dict]:
        """Detections in a (H, W, 3) uint8 BGR image (as `cv2.imread` gives), each
        {"class": str, "score": float, "box": [x, y, w, h]} in pixels."""


@dataclass(frozen=True)
class CheckedOutputs:
    """The outputs after the check: what is delivered, and the check of each output."""

    images: list[Image.Image]  # delivered images (withheld ones left out), blurred where flagged under blur
    seeds: list[int]  # their seeds, in the same order
    checks: list[SafetyCheck]  # one per output, in output order, withheld ones included
    notices: list[str]


def nudenet_available() -> bool:
    """Whether the optional `nudenet` package is installed (looked up, not imported)."""
    return importlib.util.find_spec("nudenet") is not None


@functools.lru_cache(maxsize=1)
def load_detector() -> Detector:
    """nudenet's detector with the model its wheel ships, loaded once per process."""
    from nudenet import NudeDetector

    return NudeDetector()


def checker_mode(settings: Settings) -> str:
    """The check that can run for these settings: "off", "note", "blur", "block", or "unavailable"
    (note was asked, nudenet is missing and nothing requires it: outputs go out unchecked).

    Raises:
        ValueError: the check is required (a deployment minimum above off, or blur / block) and
            nudenet is not installed; one line.
    """
    mode = settings.safety_checker
    if mode == "off" or nudenet_available():
        return mode
    if settings.min_safety != "off":
        raise ValueError(f"BACKDROP_MIN_SAFETY={settings.min_safety} needs the safety checker, "
                         f"but nudenet is not installed: {INSTALL_HINT}")
    if mode in ("blur", "block"):
        raise ValueError(f"BACKDROP_SAFETY_CHECKER={mode} needs nudenet, which is not installed: {INSTALL_HINT}")
    return "unavailable"


def check_image(image: Image.Image, detector: Detector) -> tuple[str, ...]:
    """The flagged classes found in one image.

    Args:
        image: an RGB image of any size.
        detector: nudenet's `NudeDetector` (`load_detector`) or anything with its `detect`.

    Returns:
        The `FLAGGED_LABELS` detected with a score of at least `MIN_SCORE`, sorted, each once;
        empty when the image passes.
    """
    # nudenet's own path-based use reads files with cv2.imread, i.e. BGR; hand it the same.
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    found = {d["class"] for d in detector.detect(bgr) if d["class"] in FLAGGED_LABELS and d["score"] >= MIN_SCORE}
    return tuple(sorted(found))


def blur_image(image: Image.Image) -> Image.Image:
    """The whole image under a strong Gaussian blur (radius `BLUR_FRACTION` of the longer side).

    The whole image rather than the flagged boxes: a 320-px detector's boxes are loose and can miss a
    neighbouring part, and a sharp body around a blurred patch still shows what was there.
    """
    return image.filter(ImageFilter.GaussianBlur(radius=max(4.0, BLUR_FRACTION * max(image.size))))


def check_outputs(images: Sequence[Image.Image], seeds: Sequence[int], mode: str,
                  detector: Detector | None = None) -> CheckedOutputs:
    """Check every output and act on the flagged ones.

    Args:
        images: the finished outputs (full-size composites), RGB.
        seeds: their seeds, one per image.
        mode: from `checker_mode`: "off" and "unavailable" check nothing; "note" keeps a flagged
            output and says so; "blur" delivers it blurred (`blur_image`); "block" withholds it.
        detector: the detector; None loads nudenet's (`load_detector`) when a check runs.

    Returns:
        `CheckedOutputs`; `checks` is empty when nothing was checked.
    """
    if mode in ("off", "unavailable"):
        notices = [f"outputs are not checked for nudity: {INSTALL_HINT}"] if mode == "unavailable" else []
        return CheckedOutputs(list(images), list(seeds), [], notices)
    detector = detector or load_detector()
    action = {"note": "noted", "blur": "blurred", "block": "withheld"}[mode]
    delivered, delivered_seeds, checks, notices = [], [], [], []
    for number, (image, seed) in enumerate(zip(images, seeds), start=1):
        labels = check_image(image, detector)
        checks.append(SafetyCheck(seed=seed, flagged=bool(labels), labels=labels,
                                  action=action if labels else "none"))
        if labels:
            notices.append(f"the safety checker flagged output {number} (seed {seed}: {', '.join(labels)}); "
                           f"it was {action}")
        if labels and mode == "block":
            continue
        delivered.append(blur_image(image) if labels and mode == "blur" else image)
        delivered_seeds.append(seed)
    return CheckedOutputs(delivered, delivered_seeds, checks, notices)


def describe_check(check: SafetyCheck | None, mode: str) -> str:
    """The check as one value of the PNG `parameters` ("Safety check"): e.g. "passed (note)",
    "flagged BUTTOCKS_EXPOSED (blurred)", "off", "not installed"."""
    if check is None:
        return "not installed" if mode == "unavailable" else "off"
    if not check.flagged:
        return f"passed ({mode})"
    return f"flagged {' '.join(check.labels)} ({check.action})"
