"""Scores for candidate composites, and their order: best first.

A background replacement fails in two ways people see at once, and both can be measured from pixels
alone (no model weights):

- **a visible seam**: a halo or outline hugging the subject (the new background's colour near the edge
  differs from the same background a little farther out, or the subject's rim from its inside), or an
  edge much harder than the photo's own edges;
- **light that does not fit**: the subject was lit by its old surroundings; a new background much
  brighter, darker, warmer or colder right around it looks pasted in.

Each statistic is also computed on the original photo, so a score says "how much less natural than
the photo itself": the photo as its own candidate scores exactly 0, and lower is worse. The formula is
in the README ("How candidates are ranked").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 512  # scores are computed with the long side at most this: cheap, and scale-free
LIGHT_UNIT = 20.0  # CIELAB units of L* / b* that count as one unit of lighting mismatch


@dataclass(frozen=True)
class Score:
    """One candidate's score and its parts.

    Attributes:
        seam: >= 0, how much more visible the seam is than the photo's own edge (log ratios).
        light: >= 0, the new surroundings' mismatch in brightness and colour temperature (L*, b*)
            with the old ones, in units of `LIGHT_UNIT`.
        total: -(seam + light); 0 = as natural as the photo, higher is better.
    """

    seam: float
    light: float
    total: float


def score_candidate(photo: Image.Image, candidate: Image.Image, kept: np.ndarray) -> Score:
    """Score one composite against the photo it came from (`score_candidates` for one)."""
    return score_candidates(photo, [candidate], kept)[0]


def score_candidates(photo: Image.Image, candidates: list[Image.Image], kept: np.ndarray) -> list[Score]:
    """Score composites of one photo; what depends on the photo alone is computed once.

    Args:
        photo: the original RGB photo (W, H).
        candidates: the composites, RGB, same size.
        kept: float32 (H, W) in [0, 1], the kept layer's opacity (a matte's alpha, or 1 - the
            repaint mask); >= 0.5 counts as kept.

    Returns:
        One `Score` per candidate, in their order.
    """
    scale = min(1.0, ANALYSIS_SIDE / max(photo.size))
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    alpha = Image.fromarray(np.asarray(kept, dtype=np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    rings = _Rings(np.asarray(alpha) >= 0.5)
    if rings.empty:
        return [Score(0.0, 0.0, 0.0) for _ in candidates]  # no edge: nothing to judge
    old = _lab(photo, size)
    old_halo, old_contrast = _halo(old, rings), _edge_contrast(old, rings)
    around = rings.around
    old_lightness, old_temperature = old[..., 0][around].mean(), old[..., 2][around].mean()
    scores = []
    for candidate in candidates:
        new = _lab(candidate, size)
        seam = _excess(_halo(new, rings), old_halo) + _excess(_edge_contrast(new, rings), old_contrast)
        d_lightness = new[..., 0][around].mean() - old_lightness
        d_temperature = new[..., 2][around].mean() - old_temperature  # b*: blue (-) to yellow (+)
        light = math.hypot(d_lightness, d_temperature) / LIGHT_UNIT
        scores.append(Score(seam=round(seam, 4), light=round(light, 4), total=round(-(seam + light), 4)))
    return scores


def best_first(scores: list[Score]) -> list[int]:
    """Indices of `scores` from best to worst (ties keep their order: the lower seed first)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i].total)


class _Rings:
    """Pixel rings either side of the kept layer's edge, at the analysis size.

    With w = max(2, long side / 128): `edge` is the pixels within 1.5 of the edge on either side;
    `near_*` the pixels up to w from it, `far_*` from w to 3w; `around` the new side up to 6w.
    """

    def __init__(self, kept: np.ndarray) -> None:
        import cv2

        self.empty = kept.all() or not kept.any()
        if self.empty:
            return
        self.width = max(2, round(max(kept.shape) / 128))
        inside = cv2.distanceTransform(kept.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        outside = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        w = self.width
        self.edge = (kept & (inside <= 1.5)) | (~kept & (outside <= 1.5))
        self.near_in, self.far_in = kept & (inside <= w), kept & (inside > w) & (inside <= 3 * w)
        self.near_out, self.far_out = ~kept & (outside <= w), ~kept & (outside > w) & (outside <= 3 * w)
        self.around = ~kept & (outside <= 6 * w)


def _lab(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """float32 (h, w, 3) CIELAB (L* 0..100) of `image` resized to `size` (box filter)."""
    import cv2

    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return cv2.cvtColor(np.asarray(rgb, dtype=np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _ring_mean(lab: np.ndarray, ring: np.ndarray, sigma: float) -> np.ndarray:
    """Each pixel's Gaussian-weighted mean colour over `ring` only (normalised convolution)."""
    import cv2

    weight = ring.astype(np.float32)
    total = cv2.GaussianBlur(lab * weight[..., None], (0, 0), sigma)
    count = cv2.GaussianBlur(weight, (0, 0), sigma)
    return total / np.maximum(count, 1e-6)[..., None]


def _halo(lab: np.ndarray, rings: _Rings) -> float:
    """Mean CIELAB distance (dE76) from the pixels near the edge to the same side a little farther out."""
    sigma = 2.0 * rings.width
    parts = []
    for near, far in ((rings.near_in, rings.far_in), (rings.near_out, rings.far_out)):
        if near.any() and far.any():
            parts.append(np.linalg.norm(lab[near] - _ring_mean(lab, far, sigma)[near], axis=-1).mean())
    return float(sum(parts))


def _edge_contrast(lab: np.ndarray, rings: _Rings) -> float:
    """Mean L* gradient on the edge over the mean L* gradient in the far rings either side (plus 1)."""
    import cv2

    lightness = lab[..., 0]
    gradient = np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3),
                        cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3)) / 8.0  # L* per pixel
    texture = gradient[rings.far_in | rings.far_out]
    return float(gradient[rings.edge].mean() / ((texture.mean() if texture.size else 0.0) + 1.0))


def _excess(candidate: float, photo: float) -> float:
    """How much larger a statistic is than the photo's own: max(0, ln((1 + candidate) / (1 + photo)))."""
    return max(0.0, math.log((1.0 + candidate) / (1.0 + photo)))
