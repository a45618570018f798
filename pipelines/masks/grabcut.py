"""GrabCut from clicks: the mask a click gives when no model is present, and the second candidate
beside the subject model's (`masking.predict_masks`).

GrabCut (Rother et al. 2004, "GrabCut: interactive foreground extraction using iterated graph cuts")
fits a colour model (Gaussian mixtures) to the subject and one to the background from seed labels,
and cuts the photo between them with a graph cut, several times over. `grabcut_mask` seeds it from
the clicks alone; `run_grabcut`, the seeded call itself, is shared with the subject model's
fallback (`subject.refine_subject`), which seeds it from the model's map.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.types import ClickPoint


def click_radius(shape: tuple[int, int]) -> int:
    """The radius in pixels of the spot one click marks on a photo of `shape` (H, W): 1.5% of its
    short side (GrabCut's sure-subject disk; the spot a mask must clearly outgrow)."""
    return max(2, round(0.015 * min(shape)))


# GrabCut's probable subject around a positive click: a disk of this share of the short side. With
# the clicked spot alone as subject, its background model learned the subject's own colours too and
# the cut seldom grew past the spot (IoU under 0.02 on 7-8 of 16 real photos, mean 0.28-0.34 by the
# RNG's state). Measured on them and on 16 crowded VOC/ARC instances (tests/real): 0.1 gives 0.73 and
# 0.37 (none near empty), 0.2 0.78 and 0.22 (the guess takes in neighbours), 0.3 0.58 and 0.19.
GUESS_SHARE = 0.1


def grabcut_mask(image: Image.Image, points: list[ClickPoint], iterations: int = 3,
                 max_side: int = 640) -> np.ndarray:
    """A subject mask from OpenCV GrabCut, seeded by the clicks (the fallback without SAM).

    Seeds: a small disk around each positive point is sure subject, around each negative point sure
    background; a wider disk around each positive point (`GUESS_SHARE` of the short side) is
    probable subject, everything else (the image border included) probable background. The
    subject's colour model thus starts from the clicked places and their surroundings, and the
    subject grows out from them over regions that look alike; clicking each differently coloured
    part of a subject adds it. Afterwards only the parts connected to a positive point are kept,
    which drops stray look-alike blobs elsewhere.

    Args:
        image: the RGB photo.
        points: clicks, each (X, Y) in photo pixels; at least one positive.
        iterations: GrabCut iterations (3 and 5 were within 0.004 IoU on the real photos; 3 is 2/3
            of the time).
        max_side: GrabCut runs on a copy whose long side is at most this (it is slow on large
            photos); the mask is scaled back to the photo's size.

    Returns:
        (H, W) bool at the photo's size, True = subject.
    """
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]

    radius = click_radius((h, w))
    centres = [(min(w - 1, int(p.x * scale)), min(h - 1, int(p.y * scale)), p.label) for p in points]
    guess = max(radius, round(GUESS_SHARE * min(h, w)))

    def seeds(frame: int = 0) -> np.ndarray:
        """The guesses around positive clicks, then a sure-background frame this wide, then the clicks."""
        labels = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
        for x, y, label in centres:
            if label == 1:
                cv2.circle(labels, (x, y), guess, cv2.GC_PR_FGD, thickness=-1)
        if frame:
            labels[:frame], labels[-frame:], labels[:, :frame], labels[:, -frame:] = (cv2.GC_BGD,) * 4
        for x, y, label in centres:  # drawn last: a negative click inside a positive one's guess wins
            cv2.circle(labels, (x, y), radius, cv2.GC_FGD if label == 1 else cv2.GC_BGD, thickness=-1)
        return labels

    subject = run_grabcut(small, seeds(), iterations)
    if subject[0].any() and subject[-1].any() and subject[:, 0].any() and subject[:, -1].any():
        # It reached all four sides: the guess held the background's colours too (a flat backdrop
        # gives both models the same ones). Again with the frame's edge as sure background.
        subject = run_grabcut(small, seeds(frame=max(1, round(0.02 * min(h, w)))), iterations)

    # Keep the connected parts that hold a positive click.
    _, labels = cv2.connectedComponents(subject.astype(np.uint8), connectivity=8)
    keep = {labels[y, x] for x, y, label in centres if label == 1} - {0}
    subject = np.isin(labels, list(keep))

    if scale != 1.0:
        subject = cv2.resize(subject.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    return subject


def run_grabcut(rgb: np.ndarray, seeds: np.ndarray, iterations: int) -> np.ndarray:
    """OpenCV's GrabCut on an RGB uint8 (H, W, 3) photo from `seeds` (cv2.GC_* labels, (H, W) uint8,
    updated in place): (H, W) bool, True = subject. Raises ValueError when the seeds leave GrabCut
    no subject or no background to learn from."""
    import cv2

    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    # GrabCut's colour models start from k-means, whose first centres OpenCV draws from the calling
    # thread's RNG: seeded, the same photo and clicks give the same mask whatever ran before.
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), seeds, None, bgd_model, fgd_model, iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error as err:
        raise ValueError("GrabCut found no background to learn from: click a smaller part of the photo") from err
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
