"""Real single-subject photos with a true mask: real photo cut-outs pasted over real photos.

Tux Paint's stamps are photographs of one subject (a pet, a plant, a product) cut out with real soft
alpha; opencv-doc has real photos of scenes. Pasting one over the other (alpha-blended, so the
edge is the photographer's own) gives a photo whose subject is known exactly: alpha > 0.5 is the
truth. The subject is scaled to a fixed share of the frame and placed off-centre by a fixed amount
per photo, so the set is the same on every machine.

    from subject_photos import subject_photos, iou   # tests/real on sys.path (pytest puts it there)
    for case in subject_photos():
        x, y = case.click          # (X, Y): the subject pixel farthest from its outline
        ...  iou(predicted, case.truth)

Raises FileNotFoundError (from `assets.path`) when the stamps or the photos are not fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

import assets
from voc import deepest_point, iou  # noqa: F401  (iou: the tests import it from here too)

# (stamp under usr/share/tuxpaint/stamps/, photo under usr/share/doc/opencv-doc/examples/data/,
#  share of the photo's short side the subject's long side takes, centre as a fraction of (W, H))
CASES = (
    ("animals/marsupials/koala.png", "building.jpg", 0.6, (0.45, 0.55)),
    ("animals/mammals/rodents/squirrel.png", "home.jpg", 0.6, (0.55, 0.5)),
    ("animals/mammals/dogs/dog.png", "leuvenA.jpg", 0.65, (0.5, 0.55)),
    ("animals/mammals/dogs/fox.png", "graf1.png", 0.6, (0.4, 0.5)),
    ("animals/mammals/cats/tiger.png", "board.jpg", 0.7, (0.5, 0.6)),
    ("animals/mammals/hedgehog.png", "aero1.jpg", 0.6, (0.55, 0.55)),
    ("animals/amphibians/frog.png", "stuff.jpg", 0.55, (0.5, 0.5)),
    ("animals/mammals/equines/horse.png", "left.jpg", 0.7, (0.45, 0.5)),
    ("animals/mammals/bovines/sheep.png", "starry_night.jpg", 0.6, (0.5, 0.55)),
    ("plants/trees/holm_oak.png", "building.jpg", 0.75, (0.6, 0.5)),
    ("plants/lavender.png", "home.jpg", 0.7, (0.45, 0.5)),
    ("plants/flowers/rose.png", "leuvenA.jpg", 0.6, (0.5, 0.45)),
    ("household/kettle.png", "board.jpg", 0.55, (0.45, 0.5)),
    ("household/rubberduck.png", "graf1.png", 0.5, (0.55, 0.55)),
    ("food/fruit/pineapple.png", "stuff.jpg", 0.7, (0.5, 0.5)),
    ("food/fruit/pear.png", "aero1.jpg", 0.55, (0.5, 0.5)),
)


@dataclass(frozen=True)
class SubjectPhoto:
    name: str  # the stamp's file name without .png, e.g. "koala"
    photo: Image.Image  # RGB, the composite
    alpha: np.ndarray  # (H, W) float32 in [0, 1], the subject's true alpha on the photo's grid
    truth: np.ndarray  # (H, W) bool, alpha > 0.5

    @property
    def click(self) -> tuple[int, int]:
        """(X, Y): the true subject's pixel farthest from its outline, where a person would click."""
        return deepest_point(self.truth)


def _paste(stamp: Image.Image, background: Image.Image, share: float,
           centre: tuple[float, float]) -> tuple[Image.Image, np.ndarray]:
    stamp = stamp.convert("RGBA")
    width, height = background.size
    scale = share * min(width, height) / max(stamp.size)
    size = (max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale)))
    stamp = stamp.resize(size, Image.Resampling.LANCZOS)
    left = round(centre[0] * width - size[0] / 2)
    top = round(centre[1] * height - size[1] / 2)
    layer = Image.new("RGBA", background.size, (0, 0, 0, 0))
    layer.paste(stamp, (left, top))
    rgba = np.asarray(layer, dtype=np.float32) / 255.0
    alpha = rgba[..., 3]
    photo = np.asarray(background.convert("RGB"), dtype=np.float32) / 255.0
    blended = rgba[..., :3] * alpha[..., None] + photo * (1 - alpha[..., None])
    return Image.fromarray(np.rint(blended * 255).astype(np.uint8), "RGB"), alpha


@lru_cache(maxsize=None)
def _cases() -> tuple[SubjectPhoto, ...]:
    stamps = assets.path("tuxpaint-stamps") / "usr" / "share" / "tuxpaint" / "stamps"
    photos = assets.path("opencv-doc") / "usr" / "share" / "doc" / "opencv-doc" / "examples" / "data"
    out = []
    for stamp, background, share, centre in CASES:
        with Image.open(stamps / stamp) as s, Image.open(photos / background) as b:
            photo, alpha = _paste(s, b, share, centre)
        name = stamp.rsplit("/", 1)[-1].removesuffix(".png")
        out.append(SubjectPhoto(name, photo, alpha, alpha > 0.5))
    return tuple(out)


def subject_photos() -> list[SubjectPhoto]:
    """The set, in `CASES` order (16 photos)."""
    return list(_cases())
