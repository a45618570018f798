"""A larger frame than the photo: where the photo sits on it, and how its new area is filled.

`--canvas WxH` asks for an exact size; `--canvas 16:9` for the smallest frame of that shape that holds
the photo. The photo is never scaled: it sits on the frame at `--place` (centre, or against one side),
and everything outside it joins the region to repaint, for every background kind. The subject keeps
its exact pixels at its new place.

Masks, clicks and mattes are computed on the photo in its own coordinates, then placed on the frame
(`place_layer`): outside the photo, a matte's alpha is 0 and a repaint mask is 1.

The new area starts as the photo's border reflected outward (`extend`): for `generate` that is what
a strength below 1 starts from (outpainting), and the masked blur of `blur` reads it with the
reflected weights, so the subject reflected into it stays out of the blurred background too.
Reflection is numpy's `symmetric` padding: it costs a copy, where OpenCV's inpainting of a wide new
area costs seconds at 12 MP and gives streaks that a blend at strength below 1 keeps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.composite.compositing import KeptLayer
from pipelines.settings import PLACES

_SIZE = re.compile(r"^\s*([+-]?\d+)\s*[x×X]\s*([+-]?\d+)\s*$")
_RATIO = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*:\s*([+-]?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Frame:
    """The canvas and where the photo sits on it (pixels).

    Attributes:
        width, height: the canvas size.
        left, top: the photo's top-left corner on the canvas.
        photo_width, photo_height: the photo's size (unscaled).
        place: where the photo was put ("center", "left", "right", "top" or "bottom").
    """

    width: int
    height: int
    left: int
    top: int
    photo_width: int
    photo_height: int
    place: str = "center"

    @property
    def extends(self) -> bool:
        """True when the canvas is larger than the photo (there is a new area to paint)."""
        return (self.width, self.height) != (self.photo_width, self.photo_height)

    @property
    def box(self) -> tuple[slice, slice]:
        """The photo's (rows, columns) on the canvas: `canvas_array[frame.box]` is the photo's part."""
        return slice(self.top, self.top + self.photo_height), slice(self.left, self.left + self.photo_width)

    def describe(self) -> str:
        """One line for the PNG metadata: `1920x1080, photo at 560,0 (center)`, or `none`."""
        if not self.extends:
            return "none"
        return f"{self.width}x{self.height}, photo at {self.left},{self.top} ({self.place})"


def whole_photo(size: tuple[int, int]) -> Frame:
    """The frame of a photo on no larger canvas."""
    return Frame(size[0], size[1], 0, 0, size[0], size[1])


def parse_canvas_text(text: str) -> tuple[str, float, float]:
    """`WxH` or `W:H` as ("size", W, H) or ("ratio", W, H), without looking at a photo.

    Raises:
        ValueError: neither form, or a zero or negative side (one line naming the value).
    """
    if match := _SIZE.match(text):
        width, height = int(match.group(1)), int(match.group(2))
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas {text.strip()!r}: both sides must be positive")
        return "size", width, height
    if match := _RATIO.match(text):
        width, height = float(match.group(1)), float(match.group(2))
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas {text.strip()!r}: both sides of the ratio must be positive")
        return "ratio", width, height
    raise ValueError(f"canvas {text.strip()!r} is not WxH (e.g. 1920x1080) or a ratio W:H (e.g. 16:9)")


def parse_canvas(text: str | None, photo_size: tuple[int, int], place: str = "center",
                 max_pixels: int | None = None) -> Frame:
    """The frame a request asks for.

    Args:
        text: `WxH`, `W:H`, or None / "" for no larger canvas.
        photo_size: the photo's (width, height).
        place: where the photo sits (`PLACES`).
        max_pixels: refuse a canvas with more pixels than this (BACKDROP_MAX_IMAGE_PIXELS).

    Returns:
        The `Frame`; the photo's own when `text` is empty.

    Raises:
        ValueError: an unknown place, a malformed or non-positive size, a size that cannot hold the
            photo (naming the smallest that can), or a canvas over `max_pixels`; one line.
    """
    if place not in PLACES:
        raise ValueError(f"unknown place {place!r} (choose {', '.join(PLACES)})")
    pw, ph = photo_size
    if not text or not text.strip():
        return whole_photo(photo_size)
    form, a, b = parse_canvas_text(text)
    if form == "size":
        width, height = int(a), int(b)
        if width < pw or height < ph:
            raise ValueError(f"canvas {width}x{height} cannot hold the {pw}x{ph} photo; "
                             f"the smallest that can is {max(width, pw)}x{max(height, ph)}")
    elif pw * b <= ph * a:  # the photo is narrower than the ratio: keep its height
        # round() first: a float ratio times the height may miss the integer it equals by 1e-12.
        width, height = max(pw, math.ceil(round(ph * a / b, 6))), ph
    else:
        width, height = pw, max(ph, math.ceil(round(pw * b / a, 6)))
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"canvas {width}x{height} ({width * height / 1e6:.0f} MP) is over the limit of "
                         f"{max_pixels / 1e6:.0f} MP (BACKDROP_MAX_IMAGE_PIXELS)")
    left = {"left": 0, "right": width - pw}.get(place, (width - pw) // 2)
    top = {"top": 0, "bottom": height - ph}.get(place, (height - ph) // 2)
    return Frame(width, height, left, top, pw, ph, place)


def extend(array: np.ndarray, frame: Frame) -> np.ndarray:
    """An (H, W) or (H, W, C) array of the photo's size, padded to the frame by reflection.

    The padding mirrors the photo about its border (numpy's `symmetric`), repeating the mirror as
    often as the frame needs; within the photo's box the array is unchanged.
    """
    if not frame.extends:
        return array
    pad = [(frame.top, frame.height - frame.top - frame.photo_height),
           (frame.left, frame.width - frame.left - frame.photo_width)]
    pad += [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="symmetric")


def extend_photo(photo: Image.Image, frame: Frame) -> Image.Image:
    """The photo on its canvas, its border reflected into the new area (RGB)."""
    if not frame.extends:
        return photo
    return Image.fromarray(extend(np.asarray(photo.convert("RGB")), frame), "RGB")


def place_layer(layer: KeptLayer, frame: Frame) -> KeptLayer:
    """A kept layer (`compositing.edge_layer`) computed on the photo, placed on the canvas.

    Outside the photo nothing is kept: repaint is 1 there (and the foreground, if any, 0).
    """
    if not frame.extends:
        return layer
    repaint = np.ones((frame.height, frame.width), np.float32)
    repaint[frame.box] = layer.repaint
    foreground = None
    if layer.foreground is not None:
        foreground = np.zeros((frame.height, frame.width, 3), np.float32)
        foreground[frame.box] = layer.foreground
    return KeptLayer(repaint=repaint, foreground=foreground)
