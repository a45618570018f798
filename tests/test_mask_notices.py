"""A mask far too small to be what was clicked is said, with what to do: by size against the spots
the clicks mark, for SAM's candidates and for GrabCut's mask, through `predict_masks`."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.masks.grabcut import click_radius
from pipelines.masks.masking import MaskPrediction, predict_masks, too_small, with_size_notice
from pipelines.types import ClickPoint

ONE_CLICK = [ClickPoint(250, 180, 1)]
SPECK = ("The mask covers only 40 pixels, hardly more than the clicked spot: "
         "click nearer the middle of the subject, or add a click on each of its parts")


def prediction(*areas: int, shape=(375, 500), distinct: int = 3) -> MaskPrediction:
    masks = np.zeros((3, *shape), bool)
    for k, area in enumerate(areas):
        masks[k].flat[:area] = True
    return MaskPrediction(masks=masks, scores=np.zeros(3, np.float32), low_res_logits=np.zeros((3, 8, 8), np.float32),
                          method="sam", notices=[], distinct=distinct)


class FixedPredictor:
    """Stands in for a SAM predictor: answers every click with the masks it was given."""

    def __init__(self, result: MaskPrediction) -> None:
        self.result = result

    def predict(self, image, points, mask_input=None) -> MaskPrediction:
        return self.result


def test_the_size_rule():
    assert click_radius((375, 500)) == 6 and click_radius((3000, 4000)) == 45
    assert too_small(226, (375, 500)) and not too_small(227, (375, 500))  # 2 * pi * 6^2 = 226.2
    assert too_small(12723, (3000, 4000)) and not too_small(12724, (3000, 4000))
    assert too_small(400, (375, 500), positives=2) and not too_small(400, (375, 500), positives=1)
    assert too_small(63, (20, 30)) and not too_small(64, (20, 30))  # the floor on tiny photos


def test_a_speck_gets_one_line_saying_what_to_do():
    assert with_size_notice(prediction(40, 40, 40), ONE_CLICK).notices == [SPECK]
    assert with_size_notice(prediction(0, 0, 0), ONE_CLICK).notices[0].startswith("The mask is empty, hardly")
    assert with_size_notice(prediction(5000, 40, 40), ONE_CLICK).notices == []  # the best one is a subject
    negatives = ONE_CLICK + [ClickPoint(10, 10, 0), ClickPoint(20, 20, 0)]  # only subject clicks count
    assert with_size_notice(prediction(300, 40, 40), negatives).notices == []


def test_a_larger_candidate_is_named():
    assert with_size_notice(prediction(40, 20, 9000), ONE_CLICK).notices == [
        "The mask covers only 40 pixels, hardly more than the clicked spot: "
        "pick mask 3, or click nearer the middle of the subject"]
    # A single-mask model's repeats are not candidates to pick.
    assert with_size_notice(prediction(40, 9000, 9000, distinct=1), ONE_CLICK).notices == [SPECK]


def test_predict_masks_says_it_for_sam_and_grabcut():
    photo = Image.new("RGB", (500, 375), (120, 120, 120))
    assert predict_masks(photo, ONE_CLICK, FixedPredictor(prediction(40, 40, 40))).notices == [SPECK]
    assert predict_masks(photo, ONE_CLICK, FixedPredictor(prediction(4000, 40, 40))).notices == []
    # GrabCut on a photo where only a small dot under the click differs: it keeps its seed disk.
    pixels = np.full((375, 500, 3), 120, np.uint8)
    pixels[178:183, 247:253] = (200, 30, 30)
    result = predict_masks(Image.fromarray(pixels), ONE_CLICK, None)
    area = int(result.masks[0].sum())
    assert result.method == "grabcut" and area <= np.pi * 7 ** 2
    assert result.notices[-1].startswith(f"The mask covers only {area} pixels, hardly more than the clicked spot")
