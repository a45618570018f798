"""Edges: the matte removes the old background from soft edges; feather and hard are today's composite.

Synthetic photos with a known alpha: a grey, textured subject over a saturated magenta wall, mixed
exactly by the matting equation. The binary cut (what the hard and feather edges keep) is the
baseline every number is compared with.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import images
from pipelines.composite import compositing
from pipelines.masks import masking

SIZE = 160
MAGENTA = np.array([255.0, 0.0, 255.0])
NEW_BACKGROUND = (40, 150, 60)  # a green: any magenta left in the edge shows as R, B above G


def _scene(alpha: np.ndarray, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """The photo alpha * grey subject + (1 - alpha) * magenta, and the subject's true colours."""
    rng = np.random.default_rng(seed)
    grey = 128.0 + rng.uniform(-12, 12, size=alpha.shape)[..., None] * np.ones(3)  # textured grey
    photo = alpha[..., None] * grey + (1.0 - alpha[..., None]) * MAGENTA
    return Image.fromarray(np.rint(photo).astype(np.uint8), "RGB"), grey


def _distance_from_centre() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - SIZE / 2 + 0.5, xx - SIZE / 2 + 0.5)


def soft_ramp() -> np.ndarray:
    """A disc of radius 45 whose edge fades over 10 pixels."""
    return np.clip(0.5 - (_distance_from_centre() - 45) / 10, 0, 1).astype(np.float32)


def thin_strands() -> np.ndarray:
    """A hard disc of radius 40 with 16 hairs, 1-2 pixels wide and 25 long, each 70 % opaque."""
    d = _distance_from_centre()
    alpha = (d <= 40).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + 0.5
    angle = np.arctan2(yy, xx)
    for k in range(16):
        theta = k * np.pi / 8
        across = np.abs(np.sin(angle - theta)) * d  # distance from the hair's line
        hair = (across <= 0.5 + (k % 2) * 0.5) & (np.cos(angle - theta) > 0) & (d > 40) & (d <= 65)
        alpha[hair] = 0.7
    return alpha


def fuzzy_edge() -> np.ndarray:
    """A fuzzy blob: its radius wobbles with the angle and its edge fades over 14 pixels."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + 0.5
    radius = 44 + 6 * np.sin(5 * np.arctan2(yy, xx))
    return np.clip(0.5 - (_distance_from_centre() - radius) / 14, 0, 1).astype(np.float32)


def _magenta_excess(image: Image.Image, where: np.ndarray) -> float:
    """Mean of max(0, min(R, B) - G) over `where`: how much magenta a green-backed edge still holds."""
    rgb = np.asarray(image, dtype=np.float64)[where]
    return float(np.maximum(0.0, np.minimum(rgb[:, 0], rgb[:, 2]) - rgb[:, 1]).mean())


@pytest.mark.parametrize("make_alpha", [soft_ramp, thin_strands, fuzzy_edge])
def test_matte_beats_the_binary_cut_on_alpha_and_colour(make_alpha):
    truth = make_alpha()
    photo, _ = _scene(truth)
    subject = truth >= 0.5  # what a perfect binary segmenter returns
    layer = compositing.edge_layer(photo, subject, "matte", feather=4)
    assert isinstance(layer, compositing.KeptLayer)

    # Alpha error (sum of absolute differences) against the truth.
    sad_matte = np.abs(layer.alpha - truth).sum()
    sad_binary = np.abs(subject.astype(np.float32) - truth).sum()
    assert sad_matte < sad_binary / 3, (sad_matte, sad_binary)

    # The old background left in the edge after compositing onto a green.
    background = Image.new("RGB", photo.size, NEW_BACKGROUND)
    edge = (truth > 0) & (truth < 1)
    matted = _magenta_excess(compositing.composite(photo, background, layer), edge)
    cut = _magenta_excess(images.composite(photo, background, masking.refine_mask(subject)), edge)
    assert cut > 20  # the ring people complain about
    assert matted < cut / 3, (matted, cut)


def test_solid_core_is_byte_exact_and_far_background_is_new():
    truth = fuzzy_edge()
    photo, _ = _scene(truth, seed=1)
    subject = truth >= 0.5
    radius = compositing.band_radius(photo.size, feather=4)
    matte = compositing.estimate_matte(photo, subject, radius)
    out = np.asarray(compositing.composite(photo, Image.new("RGB", photo.size, NEW_BACKGROUND), matte))

    trimap = compositing.make_trimap(subject, radius)
    assert (matte.alpha[trimap == 1] == 1).all() and (matte.alpha[trimap == 0] == 0).all()
    solid = matte.alpha == 1
    assert solid.sum() >= (trimap == 1).sum() > 3000
    assert np.array_equal(out[solid], np.asarray(photo)[solid])  # byte for byte
    assert (out[matte.alpha == 0] == NEW_BACKGROUND).all()


def test_cutout_holds_the_matte_and_clean_colours():
    truth = soft_ramp()
    photo, grey = _scene(truth, seed=2)
    matte = compositing.estimate_matte(photo, truth >= 0.5, compositing.band_radius(photo.size, feather=4))
    rgba = np.asarray(compositing.cutout(photo, matte))
    assert np.array_equal(rgba[..., 3], np.clip(np.rint(matte.alpha * 255), 0, 255).astype(np.uint8))
    solid = matte.alpha == 1
    assert np.array_equal(rgba[..., :3][solid], np.asarray(photo)[solid])
    soft = (matte.alpha > 0.2) & (matte.alpha < 1)  # where the colour is not mostly guesswork
    error = np.abs(rgba[..., :3][soft].astype(float) - grey[soft]).mean()
    old = np.abs(np.asarray(photo)[soft].astype(float) - grey[soft]).mean()
    assert error < old / 4, (error, old)


@pytest.mark.parametrize("edge, feather", [("feather", 4), ("feather", 9), ("hard", 0)])
def test_feather_and_hard_are_todays_composite(edge, feather):
    truth = fuzzy_edge()
    photo, _ = _scene(truth, seed=3)
    subject = truth >= 0.5
    rng = np.random.default_rng(5)
    generated = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    for grow, edit_subject in ((0, False), (3, False), (-2, True)):
        layer = compositing.edge_layer(photo, subject, edge, grow=grow, feather=7 if edge == "hard" else feather,
                                       edit_subject=edit_subject)
        today = masking.refine_mask(subject, grow=grow, feather=feather, edit_subject=edit_subject)
        assert np.array_equal(layer.repaint, today)
        assert np.array_equal(compositing.diffusion_mask(layer, feather=feather), today)
        assert (compositing.composite(photo, generated, layer).tobytes()
                == images.composite(photo, generated, today).tobytes())


def test_matte_diffusion_mask_repaints_all_but_the_solid_subject():
    truth = soft_ramp()
    photo, _ = _scene(truth)
    matte = compositing.edge_layer(photo, truth >= 0.5, "matte", feather=4)
    repaint = compositing.diffusion_mask(matte, feather=4)
    assert (repaint[matte.alpha == 1] == 0).all()
    assert (repaint[matte.alpha < 1] > 0).all()  # every pixel with some new background gets one


def test_band_radius_grows_with_photo_grow_and_feather():
    assert compositing.band_radius((160, 120)) == 3
    assert compositing.band_radius((4000, 3000)) == 10
    assert compositing.band_radius((4000, 3000), grow=-3, feather=4) == 17
