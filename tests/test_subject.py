"""The subject model stage (pipelines/subject.py) without real weights: a session that returns a map
we draw, picking and GrabCut on drawn photos, the cache, the download (md5, resume) against a local
server, offline behaviour, and where the stage is used (fallback, request checks, the command line).
The real u2netp on real photos is tests/real/test_real_subject.py."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from file_server import FileServer
from pipelines.entry.page import candidate_choices
from pipelines.masks import subject
from pipelines.masks.masking import predict_masks
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditRequest


class MapSession:
    """rembg's session interface (`predict(image) -> [L image]`) returning a fixed map."""

    def __init__(self, probability: np.ndarray):
        self.probability = probability
        self.calls = 0

    def predict(self, image):
        self.calls += 1
        return [Image.fromarray(np.rint(self.probability * 255).astype(np.uint8), "L")]


def _scene(height=120, width=160):
    """A grey photo with a red disk (the subject, centre (60, 60), r 30) and a blue square (rows and
    columns 90-115 / 120-150); the map says 0.95 on the disk, 0.7 on the square, 0.05 elsewhere,
    and 0.3 in a ring hole inside the disk (the model unsure there)."""
    yy, xx = np.mgrid[:height, :width]
    disk = (xx - 60) ** 2 + (yy - 60) ** 2 <= 30 ** 2
    square = (yy >= 90) & (yy < 116) & (xx >= 120) & (xx < 151)
    rgb = np.full((height, width, 3), 128, np.uint8)
    rgb[disk] = (200, 40, 40)
    rgb[square] = (40, 40, 200)
    probability = np.full((height, width), 0.05, np.float32)
    probability[disk] = 0.95
    probability[square] = 0.7
    hole = (xx - 60) ** 2 + (yy - 60) ** 2 <= 4 ** 2
    probability[hole] = 0.3
    return Image.fromarray(rgb, "RGB"), probability, disk, square


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_without_clicks_the_part_with_the_most_probability_is_kept_and_its_hole_filled():
    photo, probability, disk, square = _scene()
    cut = subject.rembg_cut(probability)
    assert cut[square].all() and not cut[60, 60]  # rembg's cut: both blobs, a hole in the subject
    found = subject.find_subject(photo, subject.SubjectModel(MapSession(probability), "map"))
    assert not found[square].any()
    assert found[60, 60]
    assert _iou(found, disk) > 0.97


def test_a_click_picks_the_part_under_it():
    photo, probability, disk, square = _scene()
    picked = subject.subject_from_clicks(photo, [ClickPoint(135, 100, 1)], probability)
    assert _iou(picked, square) > 0.95 and not picked[disk].any()


def test_a_click_where_the_model_saw_nothing_grows_from_the_photo_and_keeps_what_it_saw_out():
    photo, probability, disk, square = _scene()
    blank = probability.copy()
    blank[disk] = 0.05  # the model missed the disk, saw only the square
    picked = subject.subject_from_clicks(photo, [ClickPoint(60, 40, 1)], blank)
    assert _iou(picked, disk) > 0.9 and not picked[square].any()


def test_the_map_is_computed_once_per_photo_and_kept_read_only():
    photo, probability, *_ = _scene()
    session = MapSession(probability)
    model = subject.SubjectModel(session, "map", cache_size=1)
    first = model.probability(photo)
    assert model.probability(photo) is first and session.calls == 1
    assert first.dtype == np.float32 and first.shape == (120, 160) and not first.flags.writeable
    assert abs(float(first[60, 30]) - 0.95) < 0.01
    model.probability(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))  # a second photo pushes the first out
    model.probability(photo)
    assert session.calls == 3


def test_a_photo_without_a_subject_is_refused_in_one_line():
    photo, probability, *_ = _scene()
    model = subject.SubjectModel(MapSession(np.zeros_like(probability)), "map")
    with pytest.raises(ValueError, match=r"^the subject model \(map\) found no subject in this photo: click it instead$"):
        subject.find_subject(photo, model)


def test_a_map_of_another_size_is_refused():
    photo, probability, *_ = _scene()
    with pytest.raises(ValueError, match=r"probability map shape \(60, 80\) does not match the photo \(120, 160\)"):
        subject.refine_subject(photo, probability[::2, ::2])


def test_without_sam_one_click_goes_through_the_subject_model():
    photo, probability, disk, square = _scene()
    model = subject.SubjectModel(MapSession(probability), "map")
    result = predict_masks(photo, [ClickPoint(60, 40, 1)], None, subject_model=model)
    assert result.method == "subject" and result.masks.shape == (3, 120, 160)
    assert _iou(result.masks[0], disk) > 0.97
    assert result.notices == [subject_fallback_notice("map")]
    grabcut = predict_masks(photo, [ClickPoint(60, 40, 1)], None)
    assert grabcut.method == "grabcut" and "python -m pipelines download subject" in grabcut.notices[0]
    # The second candidate is GrabCut alone (the better one where the map joins touching things),
    # named on the page; the third repeats it.
    assert result.distinct == 2 and result.names == ("subject model", "GrabCut alone")
    assert np.array_equal(result.masks[1], grabcut.masks[0]) and np.array_equal(result.masks[2], grabcut.masks[0])
    assert np.array_equal(result.next_mask_input(1), grabcut.next_mask_input(0))
    assert candidate_choices(result) == [("1 (subject model)", 0), ("2 (GrabCut alone)", 1)]
    assert candidate_choices(grabcut) == [("GrabCut", 0)]


def subject_fallback_notice(name):
    from pipelines.masks.masking import SUBJECT_FALLBACK_NOTICE

    return SUBJECT_FALLBACK_NOTICE.format(model=name)


# ----------------------------------------------------------------------------------------------
# The model file: download, offline, loading
# ----------------------------------------------------------------------------------------------
def _settings(tmp_path, **kw) -> Settings:
    return Settings(checkpoint_dir=tmp_path, **kw)


def test_the_model_is_downloaded_into_checkpoints_rembg_checked_by_md5_and_resumed(tmp_path, monkeypatch):
    data = bytes(np.random.default_rng(1).integers(0, 256, 600_000, dtype=np.uint8))
    server = FileServer({"u2netp.onnx": data}, cut_after=250_000)
    try:
        monkeypatch.setitem(subject.SUBJECT_MODEL_FILES, "u2netp", subject.SubjectModelFile(
            server.url + "u2netp.onnx", "md5:" + hashlib.md5(data).hexdigest(), len(data)))
        settings = _settings(tmp_path, subject_model="u2netp", subject_auto_download=True)
        with pytest.raises(RuntimeError, match=r"stopped at 250000 of 600000 bytes.*run again to resume"):
            subject.ensure_subject_model(settings)
        progress = []
        path = subject.ensure_subject_model(settings, on_progress=lambda d, t: progress.append((d, t)))
        assert path == tmp_path / "rembg" / "u2netp.onnx" and path.read_bytes() == data
        assert server.ranges == [None, "bytes=250000-"] and progress[-1] == (600_000, 600_000)
    finally:
        server.close()


def test_a_damaged_download_is_caught_by_its_md5(tmp_path, monkeypatch):
    data = b"not the model" * 1000
    server = FileServer({"u2netp.onnx": data})
    try:
        monkeypatch.setitem(subject.SUBJECT_MODEL_FILES, "u2netp", subject.SubjectModelFile(
            server.url + "u2netp.onnx", "md5:8e83ca70e441ab06c318d82300c84806", len(data)))
        settings = _settings(tmp_path, subject_model="u2netp", subject_auto_download=True)
        with pytest.raises(RuntimeError, match=r"downloaded u2netp.onnx is damaged: its MD5 starts with [0-9a-f]{32}, "
                                               r"expected 8e83ca70e441ab06c318d82300c84806"):
            subject.ensure_subject_model(settings)
        assert not (tmp_path / "rembg" / "u2netp.onnx").exists()
    finally:
        server.close()


def test_no_model_and_no_download_gives_none_with_one_line_naming_the_download(tmp_path):
    settings = _settings(tmp_path, subject_auto_download=False)
    model, notices = subject.get_subject_model(settings)
    assert model is None
    assert notices == [f"no subject model: run `python -m pipelines download subject` (179 MB), "
                       f"or put isnet-general-use.onnx in {tmp_path}/rembg/"]
    request = EditRequest(image=Image.new("RGB", (32, 32)), auto_subject=True)
    from pipelines.editing import build_mask

    with pytest.raises(ValueError, match=r"^the automatic subject needs a subject model; no subject model: run"):
        build_mask(request, settings)


def test_loading_a_missing_file_is_refused_before_rembg_is_asked(tmp_path):
    with pytest.raises(ValueError, match=r"subject model file .*u2netp.onnx does not exist"):
        subject.load_subject_model(tmp_path / "u2netp.onnx", "u2netp")
    with pytest.raises(ValueError, match=r"unknown subject model 'nope'"):
        subject.load_subject_model(tmp_path / "nope.onnx", "nope")


def test_the_setting_names_one_of_rembgs_sessions():
    assert Settings().subject_model == "isnet-general-use"
    assert Settings.from_env({"BACKDROP_SUBJECT_MODEL": "u2netp"}).subject_model == "u2netp"
    with pytest.raises(ValueError, match=r"BACKDROP_SUBJECT_MODEL='bria' is not valid: expected one of isnet-general-use"):
        Settings.from_env({"BACKDROP_SUBJECT_MODEL": "bria"})


# ----------------------------------------------------------------------------------------------
# Where it is used
# ----------------------------------------------------------------------------------------------
def test_the_automatic_subject_takes_no_points_and_no_mask(tmp_path):
    from pipelines.editing import validate_request

    photo = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match=r"^the automatic subject takes no points and no mask: give one or the other$"):
        validate_request(EditRequest(image=photo, auto_subject=True, points=[ClickPoint(3, 3)],
                                     background="white"), _settings(tmp_path))
    validate_request(EditRequest(image=photo, auto_subject=True, background="white"), _settings(tmp_path))


def test_the_command_line_takes_subject_auto_instead_of_points():
    from pipelines.entry.cli import build_parser

    args = build_parser().parse_args(["edit", "photo.jpg", "--subject", "auto", "--background", "white"])
    assert args.subject == "auto" and args.point is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "photo.jpg", "--subject", "auto", "--point", "3,3"])


def test_the_api_refuses_another_subject_word():
    from pipelines.entry.api import _auto_subject

    assert _auto_subject("auto") and not _auto_subject("")
    with pytest.raises(ValueError, match=r"subject must be 'auto' or empty, got 'magic'"):
        _auto_subject("magic")


def test_find_subject_becomes_the_pages_prediction_that_the_brush_and_a_click_refine():
    from pipelines.entry.page import PageState, Stroke, candidate_choices, found_prediction

    photo, probability, disk, _ = _scene()
    found = subject.find_subject(photo, subject.SubjectModel(MapSession(probability), "map"))
    state = PageState.for_photo("k", photo).with_prediction((), found_prediction(found, ["n"]))
    assert state.has_subject and (state.subject(0) == found).all()
    assert candidate_choices(state.prediction) == [("Subject model", 0)]
    logits = state.prediction.next_mask_input(0)  # SAM's previous mask on the next click
    assert logits.shape == (1, 256, 256) and logits[0, 80, 80] == 10.0 and logits[0, 5, 5] == -10.0
    painted = PageState.for_photo("k", photo).with_prediction((), found_prediction(found, []))
    painted = type(painted)(**{**painted.__dict__, "strokes": (Stroke(((150.0, 10.0),), 6.0, True),)})
    assert painted.subject(0)[10, 150] and not found[10, 150]


def test_the_pages_find_subject_button_shows_the_found_subject_and_says_what_to_download_without_a_model():
    import app
    from pipelines.entry.page import GenerateForm, PageState

    photo, probability, disk, _ = _scene()
    model = subject.SubjectModel(MapSession(probability), "map")

    class Studio:
        def __init__(self, model, notices):
            self.model, self.notices = model, notices

        def image(self, key):
            return photo

        def subject_model(self):
            return self.model, self.notices

        def find_subject(self, key, on_progress=None):
            if self.model is None:
                raise ValueError(self.notices[0])
            return subject.find_subject(photo, self.model)

    handlers = app.Handlers(Settings(), Studio(model, []), publish=str)
    state, shown, _candidates, notices = handlers.find_subject(PageState.for_photo("k", photo), 0)
    assert state.prediction.method == "subject" and state.points == ()
    assert _iou(state.subject(0), disk) > 0.97 and shown.size == photo.size
    assert notices == "- subject found by map: click to refine it, or paint with the brush"
    request = GenerateForm(prompt="a forest", background="transparent").to_request(state, photo)
    assert (request.subject == state.subject(0)).all()

    line = "no subject model: run `python -m pipelines download subject` (179 MB), or put ..."
    handlers = app.Handlers(Settings(), Studio(None, [line]), publish=str)
    with pytest.raises(app.gr.Error, match=r"no subject model: run `python -m pipelines download subject`"):
        handlers.find_subject(PageState.for_photo("k", photo), 0)


def test_the_click_fallback_never_downloads_but_uses_a_model_already_there(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the click fallback must not download")

    monkeypatch.setattr("pipelines.downloads.download_checkpoint", no_network)
    settings = _settings(tmp_path / "a", subject_auto_download=True)
    model, notices = subject.get_subject_model(settings, download=False)
    assert model is None and notices[0].startswith("no subject model: run `python -m pipelines download subject`")

    loaded = []
    monkeypatch.setattr(subject, "load_subject_model", lambda path, name: loaded.append((path, name)) or name)
    (tmp_path / "b" / "rembg").mkdir(parents=True)
    (tmp_path / "b" / "rembg" / "u2netp.onnx").write_bytes(b"x")
    model, notices = subject.get_subject_model(_settings(tmp_path / "b"), download=False)
    assert model == "u2netp" and loaded == [(tmp_path / "b" / "rembg" / "u2netp.onnx", "u2netp")]
    assert notices == [f"subject model isnet-general-use is missing ({tmp_path}/b/rembg/isnet-general-use.onnx "
                       "is not downloaded): using u2netp"]


def test_find_subject_reports_the_models_download_in_bytes(tmp_path, monkeypatch, tiny_settings):
    """The page's first Find subject on a fresh machine downloads the model: the bytes reach the
    caller's progress (the page shows "Downloading the subject model 2.0 / 6.0 MB")."""
    from cold import make_photo

    from pipelines.entry.workbench import Workbench

    data = b"not an onnx model" * 10_000  # rembg then refuses it: the progress came before
    server = FileServer({"u2netp.onnx": data})
    try:
        monkeypatch.setitem(subject.SUBJECT_MODEL_FILES, "u2netp", subject.SubjectModelFile(
            server.url + "u2netp.onnx", "md5:" + hashlib.md5(data).hexdigest(), len(data)))
        settings = dataclasses.replace(tiny_settings, checkpoint_dir=tmp_path, subject_model="u2netp",
                                       subject_auto_download=True)
        bench = Workbench(settings)
        key = bench.add_photo(make_photo())
        progress = []
        with pytest.raises(ValueError):
            bench.find_subject(key, on_progress=lambda done, total: progress.append((done, total)))
        assert progress and progress[-1] == (len(data), len(data))
        assert (tmp_path / "rembg" / "u2netp.onnx").read_bytes() == data
    finally:
        server.close()
