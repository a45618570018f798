"""Backgrounds of every kind: what a `--background` value means, and the plain ones made from pixels.

    generate          SDXL paints it (blending.py; the default)
    transparent       no background: an RGBA cutout, alpha from the matte
    white, #1e90ff    a colour: any CSS name or hex form PIL's ImageColor reads
    brand.jpg         a picture file of any size, scaled to cover the frame, centred, not distorted
    blur, blur:24     the photo's own background under a masked Gaussian blur (radius = sigma, pixels)

A plain background (all but `generate`) is made from the photo and the request alone: no model, no
prompt, no Ollama. Every kind meets the kept layer through the one composite
(`compositing.composite`: the matte's `alpha * F + (1 - alpha) * B`, or the feather / hard mask), so
the old background's colour in soft edges is replaced on a colour or a picture just as on a
generated image, and `transparent` keeps the matte's clean colours (`compositing.cutout`).

The blur is normalised convolution (Knutsson & Westin 1993): blur(image * w) / blur(w), with w = 1 on
pure old background and 0 on the subject and its edge, so no subject colour enters the blurred
background, and the hole behind the subject fills with the background around it.

`parse_background` reads and checks a value once (`editing.validate_request` calls it); everything
after it trusts the `Background` it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps

from pipelines import images
from pipelines.composite import canvas, compositing

# `blur` alone: sigma = this fraction of the canvas's long side (60 px at 12 MP, 15 px at 1 MP),
# about a phone's portrait mode at that size.
DEFAULT_BLUR_FRACTION = 0.015
MAX_BLUR_RADIUS = 1000.0
# The blur runs on a copy shrunk so that sigma is about this many pixels there: a Gaussian of
# sigma s keeps nothing finer than s, so area-averaging by s / 3 first loses nothing visible and makes
# the cost independent of the radius.
BLUR_WORKING_SIGMA = 3.0
# Where less than this fraction of the kernel's weight falls on old background the blur is not
# defined at this radius; such pixels (deep inside a large subject) take a wider blur.
MIN_WEIGHT = 1e-3


@dataclass(frozen=True, eq=False)
class Background:
    """A parsed `--background` value.

    Attributes:
        kind: "generate", "transparent", "color", "picture" or "blur".
        color: (R, G, B) 0-255 for "color".
        picture: the picture, loaded upright RGB, for "picture".
        source: the picture's path as given, for "picture".
        radius: the Gaussian sigma in pixels for "blur"; None = DEFAULT_BLUR_FRACTION of the frame.
    """

    kind: str
    color: tuple[int, int, int] | None = None
    picture: Image.Image | None = None
    source: str = ""
    radius: float | None = None

    @property
    def plain(self) -> bool:
        """True for every kind made from pixels alone (all but "generate")."""
        return self.kind != "generate"

    def describe(self) -> str:
        """One value for the PNG metadata and `--json`: `generate`, `transparent`, `color #ffffff`,
        `picture brand.jpg` or `blur 24` (`blur auto` when the radius follows the frame)."""
        if self.kind == "color":
            return "color #{:02x}{:02x}{:02x}".format(*self.color)
        if self.kind == "picture":
            return f"picture {self.source}"
        if self.kind == "blur":
            return f"blur {self.radius:g}" if self.radius is not None else "blur auto"
        return self.kind


def _classify(value: str) -> str:
    """The kind a value names, without reading any file ("picture" for anything not a keyword,
    blur or colour)."""
    low = value.lower()
    if low in ("generate", "transparent"):
        return low
    if low == "blur" or low.startswith("blur:"):
        return "blur"
    try:
        ImageColor.getrgb(value)
        return "color"
    except ValueError:
        return "picture"


def picture_path(value: str) -> str | None:
    """The path in a `--background` value that names a picture file, else None (batch resolves it
    against the manifest's folder and hashes the file into the row's key)."""
    value = value.strip()
    return value if value and _classify(value) == "picture" else None


def parse_background(value: str, max_pixels: int = 80_000_000) -> Background:
    """Read a `--background` value.

    Args:
        value: see the module docstring.
        max_pixels: the largest picture accepted (BACKDROP_MAX_IMAGE_PIXELS).

    Returns:
        The `Background`; a picture is loaded here, once.

    Raises:
        ValueError: an unknown colour or keyword, a bad blur radius, a missing or unreadable
            picture; one line naming the value.
    """
    value = value.strip()
    kind = _classify(value)
    if kind in ("generate", "transparent"):
        return Background(kind)
    if kind == "blur":
        return Background("blur", radius=_blur_radius(value))
    if kind == "color":
        rgb = ImageColor.getrgb(value)
        if len(rgb) == 4:
            raise ValueError(f"background colour {value!r} has an alpha; use 'transparent' for a cutout")
        return Background("color", color=tuple(rgb))
    if value.startswith("#"):
        raise ValueError(f"unknown colour {value!r} (use #rrggbb, #rgb or a CSS name such as white)")
    if not value:
        raise ValueError("the background is empty (generate, transparent, blur, a colour or a picture file)")
    path = Path(value).expanduser()
    if not path.exists() and not path.suffix and "/" not in value and "\\" not in value:
        # Neither a file nor path-like: most likely a misspelt colour or keyword.
        raise ValueError(f"unknown background {value!r}: not generate, transparent, blur[:RADIUS], "
                         "a colour (white, #rrggbb, a CSS name) or a picture file")
    try:
        picture = images.load_image(path, max_pixels)
    except ValueError as err:
        raise ValueError(f"background picture {value}: {err}") from err
    return Background("picture", picture=picture, source=value)


def _blur_radius(value: str) -> float | None:
    if ":" not in value:
        return None
    text = value.split(":", 1)[1].strip()
    try:
        radius = float(text)
    except ValueError:
        raise ValueError(f"blur radius {text!r} in {value!r} is not a number (e.g. blur:24)") from None
    if not 0 < radius <= MAX_BLUR_RADIUS or math.isnan(radius):
        raise ValueError(f"blur radius must be above 0 and at most {MAX_BLUR_RADIUS:g} pixels, got {text}")
    return radius


# --- making a plain background ------------------------------------------------------------------

def make_background(background: Background, photo: Image.Image, layer: compositing.KeptLayer,
                    frame: canvas.Frame) -> Image.Image:
    """A plain background at the canvas's size (not "transparent" or "generate").

    Args:
        background: a parsed colour, picture or blur.
        photo: the photo on its canvas (`canvas.extend_photo`), RGB, (frame.width, frame.height).
        layer: the kept layer on the canvas (`canvas.place_layer`).
        frame: the canvas.

    Returns:
        RGB image of the canvas's size.
    """
    size = (frame.width, frame.height)
    if background.kind == "color":
        return Image.new("RGB", size, background.color)
    if background.kind == "picture":
        # ImageOps.fit: the largest centred crop of the picture's shape, resized; cover, no distortion.
        return ImageOps.fit(background.picture, size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    if background.kind == "blur":
        radius = background.radius or max(2.0, DEFAULT_BLUR_FRACTION * max(size))
        weight = blur_weight(layer, frame)
        return Image.fromarray(masked_blur(np.asarray(photo), weight, radius), "RGB")
    raise ValueError(f"{background.kind} is not a plain background")


def render(background: Background, photo: Image.Image, layer: compositing.KeptLayer,
           frame: canvas.Frame) -> Image.Image:
    """The output for a plain background: the kept layer over it, or alone as RGBA ("transparent").

    Args: as `make_background`.

    Returns:
        RGB (or RGBA for "transparent") of the canvas's size; byte-exact photo pixels wherever the
        layer keeps the photo whole.
    """
    if background.kind == "transparent":
        return compositing.cutout(photo, layer)
    return compositing.composite(photo, make_background(background, photo, layer, frame), layer)


def blur_weight(layer: compositing.KeptLayer, frame: canvas.Frame) -> np.ndarray:
    """Where the blur may read the photo: 1 on pure old background, 0 on the kept layer and its edge.

    The layer's edge is a guess from a binary mask (refined or not), whose neighbours may still hold
    the subject's anti-aliasing or a strand it missed, so a band of `compositing.band_radius`
    pixels is left out beyond every pixel that keeps anything. On a larger canvas the weights are
    reflected with the photo (`canvas.extend`): a subject mirrored into the new area stays out too.

    Returns:
        float32 (frame.height, frame.width), 0 or 1.
    """
    import cv2

    background = layer.repaint[frame.box] >= 1.0
    radius = compositing.band_radius((frame.photo_width, frame.photo_height))
    distance = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    background = distance > radius
    if not background.any():
        # Nothing of the old background is left to read (only the new area is painted): blur it all.
        background[:] = True
    return canvas.extend(background.astype(np.float32), frame)


def masked_blur(image: np.ndarray, weight: np.ndarray, radius: float) -> np.ndarray:
    """Normalised Gaussian blur: blur(image * weight) / blur(weight).

    Args:
        image: uint8 (H, W, 3) RGB.
        weight: float32 (H, W) in [0, 1]; 0 = this pixel must not contribute.
        radius: the Gaussian's sigma in pixels.

    Returns:
        uint8 (H, W, 3): every pixel a weighted mean of weighted pixels only. Computed on a copy
        shrunk by radius / BLUR_WORKING_SIGMA (area averaging of image * weight and of weight, so
        the ratio stays a mean of weighted pixels) and enlarged back bilinearly.
    """
    import cv2

    height, width = weight.shape
    factor = max(1, int(radius // BLUR_WORKING_SIGMA))
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    numerator = np.multiply(image, weight[..., None], dtype=np.float32)
    denominator = weight.astype(np.float32)
    if factor > 1:
        numerator = cv2.resize(numerator, small, interpolation=cv2.INTER_AREA)
        denominator = cv2.resize(denominator, small, interpolation=cv2.INTER_AREA)
    sigma = radius / factor
    out = np.zeros(numerator.shape, np.float32)
    todo = np.ones(denominator.shape, bool)
    while todo.any() and sigma <= max(denominator.shape):
        num = cv2.GaussianBlur(numerator, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        den = cv2.GaussianBlur(denominator, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        ready = todo & (den >= MIN_WEIGHT)
        out[ready] = num[ready] / den[ready][:, None]
        todo &= ~ready
        sigma *= 2  # far inside a large subject: a wider kernel reaches the background
    if todo.any():  # beyond the image's size a Gaussian is flat: the weighted mean of everything
        out[todo] = numerator.sum(axis=(0, 1)) / max(float(denominator.sum()), 1e-12)
    if factor > 1:
        out = cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR)
    # A weighted mean of 0..255 values: convertScaleAbs rounds (half to even, as np.rint) and
    # saturates in a tenth of numpy's time.
    return cv2.convertScaleAbs(out)
