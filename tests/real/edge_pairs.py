"""Exact matting pairs from real photos: Tux Paint's photo cut-outs (real soft alpha) pasted over
OpenCV's sample photos, and the mask SAM would give at best.

Each pair is a 512 x 512 photo I = alpha F + (1 - alpha) B (rounded to 8 bits) with its true alpha
and subject colours F. The "SAM-grade" mask is the true alpha cut at 0.5, averaged down to SAM's
logit grid (256 pixels on the long side: SAM scales the photo to 1024 and predicts 256 x 256
logits, so half the resolution of a 512-pixel photo), enlarged back bilinearly and cut at 0.5 again,
as SAM upsamples its logits before the cut.
Needs the fetched `tuxpaint-stamps` and `opencv-doc` assets (tests/real/assets.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

import assets

SIZE = 512
# Soft-edged subjects (leaves, fronds, flower spikes, feathers, wings, fur), stamps path under
# usr/share/tuxpaint/stamps/, each over one photo of examples/data/.
SUBJECTS = (
    ("plants/trees/liberia-palm.png", "fruits.jpg"),
    ("plants/lavender.png", "baboon.jpg"),
    ("plants/trees/holm_oak.png", "building.jpg"),
    ("animals/birds/albino_peahen.png", "home.jpg"),
    ("plants/thyme.png", "messi5.jpg"),
    ("plants/trees/tree336.png", "orange.jpg"),
    ("animals/insects/fly.png", "apple.jpg"),
    ("animals/birds/crowned_crane.png", "butterfly.jpg"),
    ("animals/mammals/cats/tiger_sumatran.png", "squirrel_cls.jpg"),
    ("animals/mammals/rodents/squirrel.png", "stuff.jpg"),
)


@dataclass
class Pair:
    name: str
    photo: Image.Image  # RGB, SIZE x SIZE
    alpha: np.ndarray  # float32 (H, W) in [0, 1], the truth
    colour: np.ndarray  # float64 (H, W, 3) in [0, 255], the subject's own colours
    mask: np.ndarray  # (H, W) bool, the SAM-grade mask


def stamp(path: str) -> Image.Image:
    return Image.open(assets.path("tuxpaint-stamps") / "usr/share/tuxpaint/stamps" / path).convert("RGBA")


def backdrop(name: str, size: tuple[int, int]) -> np.ndarray:
    picture = Image.open(assets.path("opencv-doc") / "usr/share/doc/opencv-doc/examples/data" / name)
    return np.asarray(ImageOps.fit(picture.convert("RGB"), size, Image.Resampling.LANCZOS), dtype=np.float64)


def paste(cut: Image.Image, background: np.ndarray) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """The cut-out centred over the background: the photo, the true alpha and the subject colours."""
    height, width = background.shape[:2]
    rgba = np.asarray(cut, dtype=np.float64)
    top, left = (height - rgba.shape[0]) // 2, (width - rgba.shape[1]) // 2
    alpha = np.zeros((height, width))
    colour = np.zeros((height, width, 3))
    alpha[top:top + rgba.shape[0], left:left + rgba.shape[1]] = rgba[..., 3] / 255
    colour[top:top + rgba.shape[0], left:left + rgba.shape[1]] = rgba[..., :3]
    photo = np.rint(alpha[..., None] * colour + (1 - alpha[..., None]) * background).astype(np.uint8)
    return Image.fromarray(photo, "RGB"), alpha.astype(np.float32), colour


LOGIT_SIDE = 256  # SAM's low-resolution mask: 256 x 256 for the photo scaled to a 1024-pixel side


def sam_grade(alpha: np.ndarray) -> np.ndarray:
    """The true subject on SAM's logit grid, enlarged back: what SAM gives at best."""
    import cv2

    height, width = alpha.shape
    scale = LOGIT_SIDE / max(height, width)
    low = cv2.resize((alpha >= 0.5).astype(np.float32), (round(width * scale), round(height * scale)),
                     interpolation=cv2.INTER_AREA)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5


def pairs() -> list[Pair]:
    out = []
    for path, photo_name in SUBJECTS:
        photo, alpha, colour = paste(stamp(path), backdrop(photo_name, (SIZE, SIZE)))
        out.append(Pair(path.rsplit("/", 1)[1][:-4], photo, alpha, colour, sam_grade(alpha)))
    return out


def edge_band(alpha: np.ndarray, mask: np.ndarray, reach: int = 3) -> np.ndarray:
    """Where edges differ: the true soft alpha and the mask's outline, grown by `reach` pixels."""
    import cv2

    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    soft = ((alpha > 0) & (alpha < 1)).astype(np.uint8)
    outline = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    return cv2.dilate(soft | outline, disc) > 0


def composite_error(pair: Pair, cutout: Image.Image) -> float:
    """Mean absolute error (0-255) in the edge band of the cutout over white and over black,
    against the true subject over the same."""
    rgba = np.asarray(cutout, dtype=np.float64)
    alpha, colour = rgba[..., 3:] / 255, rgba[..., :3]
    band = edge_band(pair.alpha, pair.mask)
    errors = []
    for plain in (255.0, 0.0):
        truth = pair.alpha[..., None] * pair.colour + (1 - pair.alpha[..., None]) * plain
        errors.append(np.abs(alpha * colour + (1 - alpha) * plain - truth)[band].mean())
    return float(np.mean(errors))
