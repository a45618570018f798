"""The post-hoc safety check (issue 12.5): the class filter against nudenet's real labels, the real
detector on synthetic images, note / blur / block with a fake detector, the settings rules, and the
record in the result, the PNG and `--json`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import make_photo, run_cli
from PIL import Image

from pipelines.composite import output_check as checking  # the name the assertions below were written with
from pipelines.editing import run_edit
from pipelines.outputs import read_parameters
from pipelines.settings import Settings
from pipelines.types import EditRequest


class FakeDetector:
    """Answers every call with the same detections and keeps the arrays it was given."""

    def __init__(self, detections):
        self.detections = detections
        self.seen: list[np.ndarray] = []

    def detect(self, image):
        self.seen.append(image)
        return [dict(d) for d in self.detections]


def _box(label, score=0.9):
    return {"class": label, "score": score, "box": [1, 2, 3, 4]}


def _request(**change):
    photo = make_photo()
    mask = np.zeros((photo.height, photo.width), np.float32)
    mask[:, photo.width // 2:] = 1.0
    return EditRequest(image=photo, mask=mask, prompt="a forest", num_inference_steps=2, seed=11, **change)


# --- nudenet itself ---------------------------------------------------------------------------------

def test_flagged_classes_are_nudenets_exposed_labels_and_never_faces():
    import nudenet.nudenet as detector_module

    labels = getattr(detector_module, "__labels")  # the class names the ONNX model's outputs map to
    assert checking.FLAGGED_LABELS <= set(labels)
    assert all(label.endswith("_EXPOSED") for label in checking.FLAGGED_LABELS)
    assert {"FACE_FEMALE", "FACE_MALE"} <= set(labels) and not {"FACE_FEMALE", "FACE_MALE"} & checking.FLAGGED_LABELS
    assert not any(label.endswith("_COVERED") for label in checking.FLAGGED_LABELS)
    assert sorted(checking.FLAGGED_LABELS) == ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
                                               "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"]


def test_real_detector_passes_synthetic_photos_and_reads_our_array_like_a_file(tmp_path):
    from nudenet.nudenet import _read_image

    detector = checking.load_detector()
    assert checking.load_detector() is detector  # loaded once
    for seed, size in [(0, (160, 120)), (1, (512, 384)), (2, (300, 700))]:
        photo = make_photo(*size, seed=seed)
        assert checking.check_image(photo, detector) == ()
        # nudenet's documented use reads a file (cv2.imread, BGR): our array must be preprocessed the same.
        path = tmp_path / f"photo{seed}.png"
        photo.save(path)
        bgr = np.ascontiguousarray(np.asarray(photo)[:, :, ::-1])
        from_array, from_file = _read_image(bgr)[0], _read_image(str(path))[0]
        assert from_array.shape == (1, 3, 320, 320) and np.array_equal(from_array, from_file)


# --- the filter and the actions, with a fake detector -------------------------------------------------

def test_only_exposed_classes_above_the_score_flag_an_image():
    photo = make_photo()
    detector = FakeDetector([_box("FACE_FEMALE"), _box("FEMALE_BREAST_COVERED"), _box("MALE_BREAST_EXPOSED"),
                             _box("BELLY_EXPOSED"), _box("BUTTOCKS_EXPOSED", 0.44),
                             _box("FEMALE_BREAST_EXPOSED", 0.45), _box("ANUS_EXPOSED", 0.8),
                             _box("FEMALE_BREAST_EXPOSED", 0.7)])
    assert checking.check_image(photo, detector) == ("ANUS_EXPOSED", "FEMALE_BREAST_EXPOSED")
    [seen] = detector.seen
    assert seen.dtype == np.uint8 and np.array_equal(seen, np.asarray(photo)[:, :, ::-1])  # BGR
    assert checking.check_image(photo, FakeDetector([_box("FACE_MALE"), _box("FEET_EXPOSED")])) == ()


def test_blur_leaves_no_shape():
    board = (np.indices((256, 256)).sum(0) // 8 % 2 * 255).astype(np.uint8)  # 8-px checkerboard
    image = Image.fromarray(np.stack([board] * 3, -1))
    blurred = np.asarray(checking.blur_image(image)).astype(float)
    assert blurred.shape == (256, 256, 3)
    # Away from the borders the checkerboard averages out to grey: the 0..255 squares are gone.
    inner = blurred[32:-32, 32:-32]
    assert abs(inner.mean() - 127.5) < 2 and inner.std() < 2


@pytest.mark.parametrize("mode, delivered, action", [
    ("note", [0, 1, 2], "noted"),
    ("blur", [0, 1, 2], "blurred"),
    ("block", [0, 2], "withheld"),
])
def test_note_blur_block_act_on_flagged_outputs_only(mode, delivered, action):
    outputs = [make_photo(seed=k) for k in range(3)]

    class FlagsTheSecond(FakeDetector):
        def detect(self, image):
            super().detect(image)
            return [_box("MALE_GENITALIA_EXPOSED")] if len(self.seen) == 2 else [_box("FACE_MALE")]

    checked = checking.check_outputs(outputs, [7, 8, 9], mode, FlagsTheSecond([]))
    assert [c.flagged for c in checked.checks] == [False, True, False]
    assert [c.seed for c in checked.checks] == [7, 8, 9]
    assert checked.checks[1].labels == ("MALE_GENITALIA_EXPOSED",) and checked.checks[1].action == action
    assert checked.checks[0].action == "none" and checked.checks[0].labels == ()
    assert checked.seeds == [7 + k for k in delivered]
    assert checked.notices == [f"the safety checker flagged output 2 (seed 8: MALE_GENITALIA_EXPOSED); it was {action}"]
    for image, k in zip(checked.images, delivered):
        expected = checking.blur_image(outputs[k]) if (k == 1 and mode == "blur") else outputs[k]
        assert image.tobytes() == expected.tobytes()
    if mode == "blur":
        assert checked.images[1].tobytes() != outputs[1].tobytes()


def test_off_and_unavailable_check_nothing():
    outputs = [make_photo()]
    detector = FakeDetector([_box("ANUS_EXPOSED")])
    off = checking.check_outputs(outputs, [1], "off", detector)
    assert off.checks == [] and off.notices == [] and off.images == outputs and not detector.seen
    missing = checking.check_outputs(outputs, [1], "unavailable", detector)
    assert missing.checks == [] and "not checked for nudity: pip install nudenet" in missing.notices[0]


# --- settings: a deployment minimum needs the checker ---------------------------------------------------

def test_a_minimum_refuses_the_checker_off_in_one_line():
    assert Settings().safety_checker == "note"
    with pytest.raises(ValueError, match="BACKDROP_SAFETY_CHECKER=off is not allowed with BACKDROP_MIN_SAFETY=weak"):
        Settings.from_env({"BACKDROP_MIN_SAFETY": "weak", "BACKDROP_SAFETY_CHECKER": "off"})
    with pytest.raises(ValueError, match="BACKDROP_SAFETY_CHECKER='maybe' is not valid: expected one of off, note"):
        Settings.from_env({"BACKDROP_SAFETY_CHECKER": "maybe"})
    assert Settings.from_env({"BACKDROP_SAFETY_CHECKER": "off"}).safety_checker == "off"
    assert Settings.from_env({"BACKDROP_MIN_SAFETY": "max"}, {"safety_checker": "block"}).safety_checker == "block"


@pytest.mark.parametrize("mode, minimum, outcome", [
    ("note", "off", "unavailable"),
    ("off", "off", "off"),
    ("note", "medium", "BACKDROP_MIN_SAFETY=medium needs the safety checker, but nudenet is not installed"),
    ("blur", "off", "BACKDROP_SAFETY_CHECKER=blur needs nudenet, which is not installed"),
    ("block", "off", "BACKDROP_SAFETY_CHECKER=block needs nudenet, which is not installed"),
])
def test_without_nudenet_a_required_check_is_refused(monkeypatch, mode, minimum, outcome):
    settings = Settings(safety_checker=mode, min_safety=minimum)
    assert checking.checker_mode(settings) == mode  # nudenet is installed here
    monkeypatch.setattr(checking, "nudenet_available", lambda: False)
    if outcome.startswith("BACKDROP"):
        with pytest.raises(ValueError, match=outcome) as err:
            checking.checker_mode(settings)
        assert "\n" not in str(err.value)
    else:
        assert checking.checker_mode(settings) == outcome


# --- in an edit ----------------------------------------------------------------------------------------------

def test_an_edit_records_the_check_in_the_result_and_the_png(tiny_settings):
    blur = dataclasses.replace(tiny_settings, safety_checker="blur")
    detector = FakeDetector([_box("BUTTOCKS_EXPOSED"), _box("FACE_FEMALE")])
    flagged = run_edit(_request(safety="strong", num_candidates=2), blur, detector=detector)
    record = flagged.safety
    assert (record.preset, record.warmup, record.checker) == ("Hyp-Strong", 0, "blur")  # δ 7 of 50 -> 0 of 2
    assert [(c.seed, c.flagged, c.labels, c.action) for c in record.checks] == [
        (11, True, ("BUTTOCKS_EXPOSED",), "blurred"), (12, True, ("BUTTOCKS_EXPOSED",), "blurred")]
    # The detector saw the finished composites (BGR); what was delivered and saved is their blur.
    assert len(detector.seen) == 2
    # Checked in seed order (11, 12); delivered best first (ranking), so match them by seed.
    for seed, seen in zip((11, 12), detector.seen):
        image = flagged.images[flagged.seeds.index(seed)]
        original = Image.fromarray(np.ascontiguousarray(seen[:, :, ::-1]))
        assert original.size == (160, 120)
        assert image.tobytes() == checking.blur_image(original).tobytes() != original.tobytes()
    assert Image.open(flagged.paths[0]).tobytes() == flagged.images[0].tobytes()
    params = read_parameters(flagged.paths[flagged.seeds.index(12)])
    assert params["Safety check"] == "flagged BUTTOCKS_EXPOSED (blurred)" and params["Seed"] == "12"


def test_block_withholds_flagged_outputs_and_saves_none_of_them(tiny_settings):
    block = dataclasses.replace(tiny_settings, safety_checker="block", min_safety="weak")

    class FlagsTheFirst(FakeDetector):
        def detect(self, image):
            super().detect(image)
            return [_box("FEMALE_GENITALIA_EXPOSED")] if len(self.seen) == 1 else []

    result = run_edit(_request(safety="weak", num_candidates=2), block, detector=FlagsTheFirst([]))
    assert result.seeds == [12] and len(result.images) == len(result.paths) == 1
    assert [c.action for c in result.safety.checks] == ["withheld", "none"]
    assert sorted(p.name for p in block.output_dir.iterdir()) == [result.paths[0].name]
    assert read_parameters(result.paths[0])["Safety check"] == "passed (block)"
    assert any("output 1 (seed 11: FEMALE_GENITALIA_EXPOSED); it was withheld" in n for n in result.notices)


def test_json_has_the_safety_object_with_the_real_detector(tiny_env, tmp_path):
    photo = tmp_path / "photo.png"
    make_photo(160, 120).save(photo)
    mask = Image.new("L", (160, 120), 0)
    mask.paste(255, (80, 0, 160, 120))
    mask.save(tmp_path / "mask.png")
    env = {**tiny_env, "BACKDROP_MIN_SAFETY": "medium"}
    done = run_cli(["edit", str(photo), "--mask", str(tmp_path / "mask.png"), "--prompt", "a galaxy",
                    "--safety", "max", "--sld-concept", "a cat", "--steps", "2", "--seed", "3", "--json"],
                   env, tmp_path)
    assert done.returncode == 0, done.stderr
    safety = json.loads(done.stdout)["safety"]
    from pipelines.diffusion.safety import default_sld_concept

    assert safety == {
        "preset": "Hyp-Max", "warmup": 0, "concept": f"{default_sld_concept()}, a cat", "checker": "note",
        "checks": [{"seed": 3, "flagged": False, "labels": [], "action": "none"}]}
    [first] = json.loads(done.stdout)["outputs"]
    assert read_parameters(first)["Safety check"] == "passed (note)"
