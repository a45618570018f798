"""Edges and the one composite: how the kept part of a photo meets a new background.

Every edit ends here. The photo splits into a *kept layer* (the subject, or the old background when the
subject is repainted) and the region that gets a new background. Every edge gives the same
`KeptLayer`; three edge modes decide its seam:

- ``matte`` (the default): soft edges (hair, fur, leaves, motion blur, anti-aliasing) are mixes of the
  subject and the *old* background; kept as they are, they ring the subject with the old background's
  colour, and a binary mask (SAM predicts at 256 x 256) cuts them off at a blocky line. Here the binary
  cut is refined by the colour guided filter of He et al. 2010 ("Guided Image Filtering", sec. 3.5),
  guided by the photo: in each small window alpha is a linear function of the colour, fitted to the
  cut, so the edge moves onto the photo's own colour edges and goes soft where the photo mixes.
  Where the local sure subject and sure background differ in colour, alpha is re-read on the line
  between them (`colour_line_alpha`): strands the cut calls solid, ramps wider than the filter's
  windows. The subject's own colours in the soft band are then estimated without the old
  background by blur fusion (Forte & Pitie 2021, "Approximate Fast Foreground Colour Estimation"),
  and the composite is the matting equation ``I = alpha * F + (1 - alpha) * B`` with the new
  background as B. Every step is a box filter: O(N), no solver, no JIT, the same bytes whatever the
  number of threads. Pixels the matte calls solid (alpha 1, everything more than `SOLID_DEPTH`
  pixels inside the cut) are the photo's, byte for byte.
- ``feather``: the binary cut plus a ramp *inside the repaint region* (`masking.refine_mask`), so
  every kept pixel is the photo's, byte for byte.
- ``hard``: a binary cut; each pixel is the photo's or the new background's.

Any background composites through `composite`: a generated image, a colour, a picture or the blurred
photo (`backgrounds`); `cutout` makes the transparent one from the same layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

from pipelines import settings
from pipelines.images import guided_filter
from pipelines.masks import masking

EDGE_MODES = settings.EDGE_MODES  # kept here too: the edge modes this module composites

# The guided filter: eps regularises each window's fit (colours in [0, 1]); 1e-4 keeps the colour
# edges a 1 % contrast makes, and measured best on the real set (tests/real/test_real_edges.py):
# 3e-5 to 1e-4 within 0.5 %, 1e-2 loses to the binary cut on a third of the photos.
GUIDED_EPS = 1e-4
# Deeper than this inside the cut, alpha is 1 and the pixel the photo's own: the filter's windows
# reach 2 x its radius, and a subject's truly solid pixels must stay byte-exact (with no limit the
# real set's error rose by 0.3 %: the filter only ever lost opacity there).
SOLID_DEPTH = 3
# The colour-line correction (`colour_line_alpha`): its boxes, smallest first, and the squared colour
# distances (colours in [0, 1]) at which it is trusted half: subject and background this far apart,
# the pixel this far off their line. Measured on the real set and the synthetic fixtures
# (tests/test_compositing.py): one box of 31 lost strands 25 pixels long, whose pixels see no sure
# subject; spread 0.01 lost one real photo to the binary cut, 0.08 gave up a fifth of the strands' gain.
LINE_BOXES = (31, 61, 121)
LINE_SPREAD = 0.04
LINE_OFF = 0.005
# Blur fusion's two box sizes (Forte & Pitie's: a wide one for the local colours of subject and
# background, a small one to correct with them).
FUSION_BLURS = (91, 7)
# Alphas within half an 8-bit step of 0 or 1 cannot change a byte of the composite: snap them, so
# solid subject stays the photo's own pixels exactly and the far background the new one's.
SNAP = 0.5 / 255


@dataclass
class KeptLayer:
    """The kept layer of a photo, whatever the edge: how much of the new background each pixel
    takes, and (where the edge estimated them) the kept layer's own colours.

    Attributes:
        repaint: float32 (H, W) in [0, 1], the new background's weight, 1 - alpha: 0 = the photo's
            pixel, byte-exact; 1 = the new background. For the feather and hard edges exactly
            `masking.refine_mask`'s mask (diffusion's mask too).
        foreground: float32 (H, W, 3) in [0, 255], RGB, the kept layer's own colour with the old
            background taken out, where 0 < repaint < 1 (elsewhere 0); None where the edge keeps the
            photo's own colours (feather, hard).

    Kept as repaint, not alpha: in float32 1 - (1 - m) is not always m, and the feather and hard
    edges must give `images.composite`'s bytes from `masking.refine_mask`'s mask.
    """

    repaint: np.ndarray
    foreground: np.ndarray | None = None

    @cached_property
    def alpha(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the kept layer's opacity (1 - repaint); 1 exactly where the
        photo's pixel is kept whole."""
        return (1.0 - self.repaint).astype(np.float32)


def band_radius(size: tuple[int, int], grow: int = 0, feather: int = 0) -> int:
    """Half-width in pixels of the uncertain band around the mask's edge.

    SAM predicts masks at 256 x 256 and upsamples them, so its edge is uncertain by a fraction of a
    low-resolution pixel: we take the long side / 400 (10 pixels at 12 MP, 3 at 1 MP). This is the
    guided filter's radius. Growing or feathering the mask says the edge is less certain still, so
    both widen the band (the blur background leaves it out of what it reads).

    Args:
        size: the photo's (width, height).
        grow: the grow/shrink setting in pixels (its size counts).
        feather: the feather setting in pixels.
    """
    return max(3, math.ceil(max(size) / 400)) + abs(grow) + feather


def make_trimap(kept: np.ndarray, radius: int, inner: int | None = None) -> np.ndarray:
    """A trimap from a binary kept mask: a band along its edge is unknown.

    Args:
        kept: (H, W) bool, True = the kept layer (the subject, after grow/shrink).
        radius: how far the band reaches outside the kept mask (Euclidean distance, pixels).
        inner: how far it reaches inside; `radius` when None.

    Returns:
        float64 (H, W): 1 = surely kept, 0 = surely replaced, 0.5 = unknown.
    """
    import cv2

    kept = np.asarray(kept, dtype=bool)
    inner = radius if inner is None else inner
    # distanceTransform: each non-zero pixel's distance to the nearest zero pixel. The 5x5 chamfer
    # is within 2 % of the exact distance and six times faster at 12 MP: the band needs no more.
    inside = cv2.distanceTransform(kept.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    outside = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    trimap = kept.astype(np.float64)
    trimap[(kept & (inside <= inner)) | (~kept & (outside <= radius))] = 0.5
    return trimap


def estimate_matte(photo: Image.Image, kept: np.ndarray, radius: int,
                   filter_radius: int | None = None) -> KeptLayer:
    """The binary cut refined into a matte: guided filter and colour-line alpha, blur-fusion colours,
    in the band only.

    Args:
        photo: the full-size RGB photo.
        kept: (H, W) bool at the photo's size, True = the kept layer (subject after grow/shrink).
        radius: how far outside the cut alpha may be above 0 (`band_radius` with grow and feather).
        filter_radius: the guided filter's window radius; `band_radius(photo.size)` when None.

    Returns:
        The `KeptLayer` with its foreground. Alpha is exactly 1 more than `SOLID_DEPTH` pixels
        inside the cut and exactly 0 more than `radius` pixels outside it.
    """
    kept = np.asarray(kept, dtype=bool)
    if kept.shape != (photo.height, photo.width):
        raise ValueError(f"kept mask shape {kept.shape} does not match the photo ({photo.height}, {photo.width})")
    filter_radius = filter_radius or band_radius(photo.size)
    trimap = make_trimap(kept, radius, inner=min(SOLID_DEPTH, radius))
    unknown = trimap == 0.5
    alpha = kept.astype(np.float32)
    foreground = np.zeros((photo.height, photo.width, 3), np.float32)  # touched only in the band
    if unknown.any():
        # One crop around the band, with the context its box filters read (the filter's windows
        # reach 2 x its radius, the colour line and blur fusion half their widest box): the cost
        # follows the subject's outline, and a crop's bytes depend on nothing but photo and cut.
        pad = 2 * filter_radius + max(LINE_BOXES[-1], FUSION_BLURS[0]) // 2 + 1
        ys, xs = np.nonzero(unknown.any(axis=1))[0], np.nonzero(unknown.any(axis=0))[0]
        box = (slice(max(0, ys[0] - pad), ys[-1] + pad + 1), slice(max(0, xs[0] - pad), xs[-1] + pad + 1))
        rgb = np.asarray(photo.convert("RGB"))[box].astype(np.float32) / 255.0
        band = unknown[box]
        refined = np.clip(guided_filter(rgb, alpha[box], filter_radius, GUIDED_EPS), 0.0, 1.0)
        refined = colour_line_alpha(rgb, refined, trimap[box])
        refined[refined <= SNAP] = 0.0
        refined[refined >= 1.0 - SNAP] = 1.0
        crop = alpha[box]  # a view: writes land in alpha
        crop[band] = refined[band]
        soft = (crop > 0.0) & (crop < 1.0)
        colours = blur_fusion(rgb, crop) * 255.0
        foreground[box][soft] = colours[soft]
    return KeptLayer(repaint=(1.0 - alpha).astype(np.float32), foreground=foreground)


def colour_line_alpha(image: np.ndarray, alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Alpha re-read from the photo where its colour lies between the local subject and background.

    The guided filter follows the cut's shape: a strand the cut calls subject stays opaque, and a
    wide soft ramp softens over its windows only. The matting equation says more: a pixel of colour
    I between the local subject colour F and background colour B has alpha = (I - B).(F - B) /
    |F - B|^2 (the colour-line model of Levin et al. 2008). F and B are the mean colours of the
    sure subject and the sure background around the pixel, in the smallest of `LINE_BOXES` that
    holds some of each. Trusted in proportion to how far apart F and B are and how close I lies to
    their line, since on textured backgrounds a mean colour says little.

    Args:
        image: float32 (H, W, 3) in [0, 1], the photo.
        alpha: float32 (H, W) in [0, 1], the guided filter's alpha.
        trimap: (H, W): 1 = sure subject, 0 = sure background, 0.5 = the band (`make_trimap`).

    Returns:
        float32 (H, W) in [0, 1]: the two blended by that confidence in the band, `alpha` elsewhere.
    """
    import cv2

    band = trimap == 0.5
    pixels = image[band]
    means = []
    for sure in (trimap == 1.0, trimap == 0.0):
        weight = sure.astype(np.float32)
        weighted = image * weight[..., None]
        mean, found = np.zeros_like(pixels), np.zeros(len(pixels), bool)
        for size in LINE_BOXES:
            share = cv2.blur(weight, (size, size))[band]
            new = ~found & (share > 0.02)  # 2 % of the box is sure: enough pixels for a mean
            mean[new] = cv2.blur(weighted, (size, size))[band][new] / share[new, None]
            found |= new
            if found.all():
                break
        means.append((mean, found))
    (mean_f, found_f), (mean_b, found_b) = means
    line = mean_f - mean_b
    spread = (line * line).sum(axis=-1)
    along = np.clip(((pixels - mean_b) * line).sum(axis=-1) / (spread + 1e-6), 0.0, 1.0)
    off = pixels - (mean_b + along[:, None] * line)
    trust = (found_f & found_b) * spread / (spread + LINE_SPREAD) * np.exp(-(off * off).sum(axis=-1) / LINE_OFF)
    out = alpha.copy()
    out[band] = trust * along + (1 - trust) * alpha[band]
    return out


def blur_fusion(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The kept layer's own colours by blur fusion (Forte & Pitie 2021, eq. 7, applied twice).

    Args:
        image: float32 (H, W, 3) in [0, 1], the photo.
        alpha: float32 (H, W) in [0, 1].

    Returns:
        float32 (H, W, 3) in [0, 1]: F, meaningful where alpha > 0.
    """
    import cv2

    a = alpha[..., None]
    foreground, background = image, image
    for size in FUSION_BLURS:
        blurred_alpha = cv2.blur(alpha, (size, size))[..., None]
        # The local means of the subject's and the background's colours, each weighted by its share.
        mean_f = cv2.blur(foreground * a, (size, size)) / (blurred_alpha + 1e-5)
        background = cv2.blur(background * (1 - a), (size, size)) / ((1 - blurred_alpha) + 1e-5)
        # F = mean F + alpha (I - alpha mean F - (1 - alpha) mean B): the residual goes to F in
        # proportion to alpha.
        foreground = np.clip(mean_f + a * (image - a * mean_f - (1 - a) * background), 0.0, 1.0)
    return foreground


def edge_layer(photo: Image.Image, subject: np.ndarray, edge: str, grow: int = 0, feather: int = 0,
               edit_subject: bool = False, cut: np.ndarray | None = None) -> KeptLayer:
    """How the kept layer meets the new background, for one edge mode.

    Args:
        photo: the full-size RGB photo.
        subject: (H, W) bool, True = subject (before grow/shrink).
        edge: "matte", "feather" or "hard".
        grow: grow (>0) or shrink (<0) the subject by this many pixels first.
        feather: the seam width (feather mode; the matte's band follows the photo's size and grow,
            and its feather is diffusion's ramp only, `diffusion_mask`).
        edit_subject: keep the old background and repaint the subject.
        cut: `masking.refine_mask(subject, grow=grow, edit_subject=edit_subject)` (no feather) when
            the caller has it already: saves a full-size distance transform. Made here when None.

    Returns:
        The `KeptLayer`. For "feather" and "hard" its repaint is exactly `masking.refine_mask`'s
        mask (no ramp for "hard") and it has no foreground.
    """
    if edge == "feather" and feather:
        return KeptLayer(masking.refine_mask(subject, grow=grow, feather=feather, edit_subject=edit_subject))
    if cut is None:
        cut = masking.refine_mask(subject, grow=grow, edit_subject=edit_subject)
    if edge != "matte":
        return KeptLayer(cut)  # "hard", or "feather" with no ramp: the cut itself
    # The band reaches one pixel beyond the filter's radius: the filter's windows reach twice as far,
    # but there (a hard edge over a noisy wall) they only leak a faint copy of the subject.
    return estimate_matte(photo, cut == 0, band_radius(photo.size, grow) + 1)


def diffusion_mask(layer: KeptLayer, feather: int = 0) -> np.ndarray:
    """The region diffusion must repaint so that `composite` has a new background under every pixel.

    That is everything but the solid kept layer, at least as much as the composite takes of the
    new background, with a feather ramp from the solid layer to soften the latent blend. For the
    feather and hard edges this is their own mask exactly (the ramp never exceeds it).

    Returns:
        float32 (H, W) in [0, 1], 1 = repaint.
    """
    return np.maximum(layer.repaint, masking.refine_mask(layer.repaint == 0.0, feather=feather))


def cutout(photo: Image.Image, layer: KeptLayer) -> Image.Image:
    """The kept layer alone, as an RGBA image: its alpha, the photo's own pixels where it is 1 (and,
    for the feather and hard edges, wherever it is above 0) and the estimated foreground colours
    (old background taken out) where the matte made it soft.

    Returns:
        RGBA image of the photo's size; transparent (alpha 0, colour 0) where nothing is kept.
    """
    import cv2

    alpha = layer.alpha
    rgb = np.zeros((photo.height, photo.width, 3), np.uint8)
    cv2.copyTo(np.asarray(photo.convert("RGB")), (alpha > 0.0).view(np.uint8), rgb)
    if layer.foreground is not None:
        # cv2 for the whole-image passes (a tenth of numpy's time at 12 MP); convertScaleAbs rounds
        # half to even and saturates, as np.clip(np.rint(...)) does, on values never negative here.
        soft = ((alpha > 0.0) & (alpha < 1.0)).view(np.uint8)
        cv2.copyTo(cv2.convertScaleAbs(layer.foreground), soft, rgb)
    return Image.fromarray(np.dstack([rgb, cv2.convertScaleAbs(alpha, alpha=255.0)]), "RGBA")


def composite(photo: Image.Image, background: Image.Image, layer: KeptLayer) -> Image.Image:
    """The photo's kept layer over a new background, at the photo's full size.

    Args:
        photo: the full-size RGB photo.
        background: the new background, RGB, any size (resized to the photo, Lanczos).
        layer: the `KeptLayer` (`edge_layer`).

    Returns:
        RGB image of the photo's size. Where repaint is 0 the photo's pixels, byte for byte; where
        it is 1 the background's; in between round(K + (B - K) * repaint), K the layer's foreground
        colour or, without one, the photo's (exactly `images.composite` for feather and hard).
    """
    return composite_all(photo, [background], layer)[0]


def composite_all(photo: Image.Image, backgrounds: list[Image.Image], layer: KeptLayer) -> list[Image.Image]:
    """`composite` for several backgrounds of one photo (an edit's candidates): the photo's pixels
    and the layer's solid and soft parts are read once, not once per background."""
    import cv2

    rgb = np.asarray(photo.convert("RGB"))
    weight = layer.repaint
    if weight.shape != rgb.shape[:2]:
        raise ValueError(f"layer shape {weight.shape} does not match the photo ({photo.height}, {photo.width})")
    solid = (weight == 0.0).view(np.uint8)
    soft = (weight > 0.0) & (weight < 1.0)
    w = weight[soft][:, None]
    kept = (layer.foreground if layer.foreground is not None else rgb)[soft].astype(np.float32)
    finals = []
    for background in backgrounds:
        if background.size != photo.size:
            background = background.resize(photo.size, Image.Resampling.LANCZOS)
        out = np.array(background.convert("RGB"))
        cv2.copyTo(rgb, solid, out)  # np.copyto's result, 10x faster
        # The matting equation alpha F + (1 - alpha) B, written as images.composite writes it.
        mixed = kept + (out[soft].astype(np.float32) - kept) * w
        out[soft] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        finals.append(Image.fromarray(out, "RGB"))
    return finals
