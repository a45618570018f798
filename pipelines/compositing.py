"""Edges and the one composite: how the kept part of a photo meets a new background.

Every edit ends here. The photo splits into a *kept layer* (the subject, or the old background when the
subject is repainted) and the region that gets a new background. Three edge modes decide the seam:

- ``hard``: a binary cut; each pixel is the photo's or the new background's.
- ``feather``: the binary cut plus a ramp *inside the repaint region* (`masking.refine_mask`), so
  every kept pixel is the photo's, byte for byte.
- ``matte`` (the default): soft edges (hair, fur, motion blur, anti-aliasing) are mixes of the subject
  and the *old* background; kept as they are, they ring the subject with the old background's colour.
  Here an unknown band around the mask's edge (a trimap) is solved by closed-form alpha matting
  (Levin et al. 2008), the subject's own colours in the band are estimated without the old background
  (multi-level foreground estimation, Germer et al. 2020), and the composite is the matting equation
  ``I = alpha * F + (1 - alpha) * B`` with the new background as B. Pixels the matte calls solid
  (alpha 1) are the photo's, byte for byte.

Both solvers come from `pymatting` and run only on tiles that hold part of the band, so the cost grows
with the length of the subject's outline, not with the photo's area.

Any background composites through `composite`: a generated image, a colour, a picture or the blurred
photo (`backgrounds`); `Matte` is also what a transparent cutout needs (alpha and the clean colours).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines import images, masking, settings

EDGE_MODES = settings.EDGE_MODES  # kept here too: the edge modes this module composites

# The band is solved in TILE x TILE blocks. Fewer, larger blocks cost less in all: at 12 MP, 256 took
# 2.5-2.8 s where 128 took 3.4-4.1 (less context solved twice, fewer solver start-ups) ...
TILE = 256
# ... each with context around it: beyond the band's radius, so every block sees known pixels, and
# at least 16 pixels, so it sees the roots of strands that cross into it (with 8 a 25-pixel hair lost
# half its alpha where it crossed a block's side; with 16 the blocks agree with one whole-image solve).
MIN_MARGIN = 16
# Alphas within half an 8-bit step of 0 or 1 cannot change a byte of the composite: snap them, so
# solid subject stays the photo's own pixels exactly and the far background the new one's.
SNAP = 0.5 / 255
CG_RTOL = 1e-5  # the conjugate-gradient solve's relative residual (see _solve_block)


@dataclass
class Matte:
    """The kept layer of a photo, as matting sees it.

    Attributes:
        alpha: float32 (H, W) in [0, 1], the kept layer's opacity: 1 = the photo's pixel, kept
            byte-exact; 0 = the new background; in between only inside the edge band.
        foreground: float32 (H, W, 3) in [0, 255], RGB, the kept layer's own colour with the old
            background taken out, where 0 < alpha < 1 (elsewhere 0: where alpha is 1 the colour is
            the photo's own, see `cutout`).
    """

    alpha: np.ndarray
    foreground: np.ndarray

    @property
    def repaint(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the new background's weight in the composite (1 - alpha)."""
        return (1.0 - self.alpha).astype(np.float32)


def band_radius(size: tuple[int, int], grow: int = 0, feather: int = 0) -> int:
    """Half-width in pixels of the unknown band around the mask's edge.

    SAM predicts masks at 256 x 256 and upsamples them, so its edge is uncertain by a fraction of a
    low-resolution pixel: we take the long side / 400 (10 pixels at 12 MP, 3 at 1 MP). Growing or
    feathering the mask says the edge is less certain still, so both widen the band.

    Args:
        size: the photo's (width, height).
        grow: the grow/shrink setting in pixels (its size counts).
        feather: the feather setting in pixels.
    """
    return max(3, math.ceil(max(size) / 400)) + abs(grow) + feather


def make_trimap(kept: np.ndarray, radius: int) -> np.ndarray:
    """A trimap from a binary kept mask: everything within `radius` pixels of its edge is unknown.

    Args:
        kept: (H, W) bool, True = the kept layer (the subject, after grow/shrink).
        radius: the band's half-width in pixels (Euclidean distance to the other side).

    Returns:
        float64 (H, W): 1 = surely kept, 0 = surely replaced, 0.5 = unknown.
    """
    import cv2

    kept = np.asarray(kept, dtype=bool)
    # distanceTransform: each non-zero pixel's distance to the nearest zero pixel. The 5x5 chamfer
    # is within 2 % of the exact distance and six times faster at 12 MP: the band needs no more.
    inside = cv2.distanceTransform(kept.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    outside = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    trimap = kept.astype(np.float64)
    trimap[(kept & (inside <= radius)) | (~kept & (outside <= radius))] = 0.5
    return trimap


def estimate_matte(photo: Image.Image, kept: np.ndarray, radius: int, workers: int = 2) -> Matte:
    """Alpha and foreground colour of the kept layer, solved only in the band around its edge.

    Args:
        photo: the full-size RGB photo.
        kept: (H, W) bool at the photo's size, True = the kept layer (subject after grow/shrink).
        radius: the band's half-width (`band_radius`).
        workers: threads solving blocks at once (pymatting's kernels release the GIL).

    Returns:
        The `Matte`. Outside the band alpha is exactly 1 on the kept side and 0 on the other.
    """
    trimap = make_trimap(kept, radius)
    rgb = np.asarray(photo.convert("RGB"))
    alpha = (trimap == 1.0).astype(np.float32)
    foreground = np.zeros(rgb.shape, np.float32)  # allocated lazily: only the band's pages are touched
    margin = max(MIN_MARGIN, radius + 2)
    blocks = _band_blocks(trimap == 0.5, TILE)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (y0, y1, x0, x1), (a, f) in zip(
                blocks, pool.map(lambda b: _solve_block(rgb, trimap, b, margin), blocks)):
            alpha[y0:y1, x0:x1] = a
            foreground[y0:y1, x0:x1] = f
    return Matte(alpha=alpha, foreground=foreground)


def _band_blocks(unknown: np.ndarray, tile: int) -> list[tuple[int, int, int, int]]:
    """The (y0, y1, x0, x1) grid blocks of `tile` pixels that hold at least one unknown pixel."""
    height, width = unknown.shape
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((rows * tile, cols * tile), dtype=bool)
    padded[:height, :width] = unknown
    hit = padded.reshape(rows, tile, cols, tile).any(axis=(1, 3))
    return [(r * tile, min(height, (r + 1) * tile), c * tile, min(width, (c + 1) * tile))
            for r, c in zip(*np.nonzero(hit))]


def _solve_block(rgb: np.ndarray, trimap: np.ndarray, block: tuple[int, int, int, int],
                 margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form alpha and ML foreground for one block, solved with `margin` pixels of context."""
    import numba
    from pymatting import estimate_alpha_cf, estimate_foreground_ml, jacobi

    # One numba thread per block: blocks already run side by side, and numba's own threads only
    # wait on each other at this size.
    numba.set_num_threads(1)
    y0, y1, x0, x1 = block
    height, width = trimap.shape
    cy0, cy1 = max(0, y0 - margin), min(height, y1 + margin)
    cx0, cx1 = max(0, x0 - margin), min(width, x1 + margin)
    image = rgb[cy0:cy1, cx0:cx1].astype(np.float64) / 255.0
    crop = trimap[cy0:cy1, cx0:cx1]
    inner = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    if not (crop == 0.0).any() or not (crop == 1.0).any():
        # Only one kind of known pixel in reach: the closed-form solution is that constant
        # (pymatting refuses such a trimap), and the colours are the photo's own.
        value = 1.0 if (crop == 1.0).any() else 0.0
        return np.full(crop[inner].shape, value, np.float32), np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    # Jacobi, not pymatting's default incomplete Cholesky: a block's system is small (a few thousand
    # unknowns), and factorising it costs more than the iterations it saves (same alpha to 1e-6).
    # A relative residual of 1e-5, not 1e-7: alpha moves by at most 0.4 of an 8-bit step, for a
    # fifth fewer iterations.
    alpha = estimate_alpha_cf(image, crop, preconditioner=jacobi, cg_kwargs={"rtol": CG_RTOL})
    foreground = estimate_foreground_ml(image, alpha)
    alpha = alpha[inner].astype(np.float32)
    alpha[alpha <= SNAP] = 0.0
    alpha[alpha >= 1.0 - SNAP] = 1.0
    foreground = np.clip(foreground[inner], 0.0, 1.0).astype(np.float32) * 255.0
    foreground[(alpha == 0.0) | (alpha == 1.0)] = 0.0
    return alpha, foreground


def cutout(photo: Image.Image, matte: Matte) -> Image.Image:
    """The kept layer alone, as an RGBA image: alpha from the matte, the photo's own pixels where it
    is 1 and the estimated foreground colours (old background taken out) where it is soft.

    Returns:
        RGBA image of the photo's size; transparent (alpha 0, colour 0) where nothing is kept.
    """
    import cv2

    alpha = matte.alpha
    # cv2 for the whole-image passes (a tenth of numpy's time at 12 MP); convertScaleAbs rounds half
    # to even and saturates, as np.clip(np.rint(...)) does, on values that are never negative here.
    rgb = cv2.convertScaleAbs(matte.foreground)
    cv2.copyTo(np.asarray(photo.convert("RGB")), (alpha == 1.0).view(np.uint8), rgb)
    return Image.fromarray(np.dstack([rgb, cv2.convertScaleAbs(alpha, alpha=255.0)]), "RGBA")


def as_matte(photo: Image.Image, layer: Matte | np.ndarray) -> Matte:
    """Any kept layer as a `Matte` (for `cutout`): a matte as it is; a feather or hard repaint mask
    as alpha = 1 - mask, with the photo's own colours wherever it is partly kept (those edges have no
    estimated foreground: that is what the matte edge adds).
    """
    if isinstance(layer, Matte):
        return layer
    alpha = (1.0 - layer).astype(np.float32)
    foreground = np.asarray(photo.convert("RGB"), dtype=np.float32) * ((alpha > 0) & (alpha < 1))[..., None]
    return Matte(alpha=alpha, foreground=foreground)


def edge_layer(photo: Image.Image, subject: np.ndarray, edge: str, grow: int = 0, feather: int = 0,
               edit_subject: bool = False, cut: np.ndarray | None = None) -> Matte | np.ndarray:
    """How the kept layer meets the new background, for one edge mode.

    Args:
        photo: the full-size RGB photo.
        subject: (H, W) bool, True = subject (before grow/shrink).
        edge: "matte", "feather" or "hard".
        grow: grow (>0) or shrink (<0) the subject by this many pixels first.
        feather: the seam width (feather mode) or the band's extra width (matte mode).
        edit_subject: keep the old background and repaint the subject.
        cut: `masking.refine_mask(subject, grow=grow, edit_subject=edit_subject)` (no feather) when
            the caller has it already: saves a full-size distance transform. Made here when None.

    Returns:
        For "matte", the `Matte`. For "feather" and "hard", the repaint mask exactly as
        `masking.refine_mask` makes it (float32 (H, W), 1 = repaint; no ramp for "hard").
    """
    if edge == "feather" and feather:
        return masking.refine_mask(subject, grow=grow, feather=feather, edit_subject=edit_subject)
    if cut is None:
        cut = masking.refine_mask(subject, grow=grow, edit_subject=edit_subject)
    if edge != "matte":
        return cut  # "hard", or "feather" with no ramp: the cut itself
    return estimate_matte(photo, cut == 0, band_radius(photo.size, grow, feather))


def diffusion_mask(layer: Matte | np.ndarray, feather: int = 0) -> np.ndarray:
    """The region diffusion must repaint so that `composite` has a new background under every pixel.

    With a matte that is everything but the solid kept layer: the band too, since its pixels take
    (1 - alpha) of the new background. A feather ramp inside that region softens the latent blend.

    Returns:
        float32 (H, W) in [0, 1], 1 = repaint (the mask itself for feather / hard).
    """
    if isinstance(layer, Matte):
        return masking.refine_mask(layer.alpha == 1.0, feather=feather)
    return layer


def composite(photo: Image.Image, background: Image.Image, layer: Matte | np.ndarray) -> Image.Image:
    """The photo's kept layer over a new background, at the photo's full size.

    Args:
        photo: the full-size RGB photo.
        background: the new background, RGB, any size (resized to the photo, Lanczos).
        layer: a `Matte` (edge mode "matte"), or a repaint mask float32 (H, W) in [0, 1]
            (modes "feather" and "hard": exactly `images.composite`).

    Returns:
        RGB image of the photo's size. Where alpha is 1 (or the mask 0) the photo's pixels, byte
        for byte; where alpha is 0 the background's; in between round(alpha * F + (1 - alpha) * B).
    """
    return composite_all(photo, [background], layer)[0]


def composite_all(photo: Image.Image, backgrounds: list[Image.Image],
                  layer: Matte | np.ndarray) -> list[Image.Image]:
    """`composite` for several backgrounds of one photo (an edit's candidates): the photo's pixels
    and the matte's solid and soft parts are read once, not once per background."""
    if not isinstance(layer, Matte):
        return [images.composite(photo, background, layer) for background in backgrounds]
    import cv2

    rgb = np.asarray(photo.convert("RGB"))
    alpha = layer.alpha
    solid = (alpha == 1.0).view(np.uint8)
    soft = (alpha > 0.0) & (alpha < 1.0)
    a = alpha[soft][:, None]
    kept = a * layer.foreground[soft]
    finals = []
    for background in backgrounds:
        if background.size != photo.size:
            background = background.resize(photo.size, Image.Resampling.LANCZOS)
        out = np.array(background.convert("RGB"))
        cv2.copyTo(rgb, solid, out)  # np.copyto's result, 10x faster
        mixed = kept + (1.0 - a) * out[soft].astype(np.float32)  # matting equation
        out[soft] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        finals.append(Image.fromarray(out, "RGB"))
    return finals
