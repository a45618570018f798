"""Candidate scores: the photo itself scores 0; a halo, a hard outline or foreign light scores lower."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.composite import ranking

SIZE = 200


def _scene() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A warm-lit subject (a disc) on a warm beige, gently textured wall; returns photo, kept, distance."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    distance = np.hypot(yy - SIZE / 2, xx - SIZE / 2) - 55  # < 0 inside the subject
    rng = np.random.default_rng(0)
    wall = np.array([205.0, 185.0, 150.0]) + rng.normal(0, 4, (SIZE, SIZE, 1))
    subject = np.array([170.0, 120.0, 90.0]) + rng.normal(0, 6, (SIZE, SIZE, 1))
    kept = distance < 0
    photo = np.where(kept[..., None], subject, wall)
    return Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8)), kept, distance


def _with_background(photo: Image.Image, kept: np.ndarray, background: np.ndarray) -> Image.Image:
    out = np.where(kept[..., None], np.asarray(photo, dtype=np.float64), background)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def test_the_photo_scores_zero_and_failures_score_lower():
    photo, kept, distance = _scene()
    alpha = kept.astype(np.float32)
    rng = np.random.default_rng(1)
    texture = rng.normal(0, 4, (SIZE, SIZE, 1))
    similar = np.array([200.0, 182.0, 152.0]) + texture  # another warm wall: a good candidate
    halo = similar.copy()
    ring = (distance >= 0) & (distance < 4)
    halo[ring] = [250.0, 250.0, 250.0]  # a bright outline hugging the subject: a visible seam
    cold = np.array([60.0, 80.0, 140.0]) + texture  # a dark blue night: foreign light

    assert ranking.score_candidate(photo, photo, alpha) == ranking.Score(0.0, 0.0, 0.0)
    good = ranking.score_candidate(photo, _with_background(photo, kept, similar), alpha)
    seam = ranking.score_candidate(photo, _with_background(photo, kept, halo), alpha)
    light = ranking.score_candidate(photo, _with_background(photo, kept, cold), alpha)

    assert good.total > -0.2
    assert seam.seam > 0.5 > good.seam and seam.total < good.total - 0.5
    assert light.light > 3 > 0.5 > good.light and light.total < good.total - 2
    assert ranking.best_first([seam, good, light]) == [1, 0, 2]


def test_ties_keep_seed_order_and_no_edge_scores_zero():
    same = ranking.Score(0.1, 0.2, -0.3)
    assert ranking.best_first([same, same, ranking.Score(0, 0, 0)]) == [2, 0, 1]
    photo = Image.new("RGB", (64, 48), (10, 20, 30))
    other = Image.new("RGB", (64, 48), (200, 20, 30))
    assert ranking.score_candidate(photo, other, np.ones((48, 64), np.float32)).total == 0.0
