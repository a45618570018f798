"""The page's logic without a browser: session state, the Generate form, previews, checks at the edge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import half_mask, make_photo
from PIL import Image

from pipelines import images
from pipelines.editing import run_edit, validate_request
from pipelines.masks.masking import MaskPrediction
from pipelines.entry.page import (DISPLAY_SIDE, GenerateForm, PageState, Stroke, candidate_choices, captions,
                            guidance_limits, mask_png, preview, repaint_mask, safety_markdown, uploaded_subject)
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditRequest


def _prediction(height: int, width: int, method: str = "sam") -> MaskPrediction:
    masks = np.zeros((3, height, width), bool)
    masks[0, : height // 2, : width // 2] = True  # candidate 0: the top-left quarter
    masks[1, height // 2 :, width // 2 :] = True  # candidate 1: the bottom-right quarter
    masks[2, :, : width // 2] = True
    return MaskPrediction(masks=masks, scores=np.array([0.9, 0.5, 0.25], np.float32),
                          low_res_logits=np.zeros((3, 16, 16), np.float32), method=method)


def test_clicks_are_mapped_from_the_display_to_the_photo():
    photo = Image.new("RGB", (2 * DISPLAY_SIDE, 1500))
    state = PageState.for_photo("key", photo)
    assert state.display.size == (DISPLAY_SIDE, 750)
    points = state.click(photo, (100, 50), subject=True)
    points = dataclasses.replace(state, points=points).click(photo, (DISPLAY_SIDE, 750), subject=False)
    assert points == (ClickPoint(200, 100, 1), ClickPoint(2 * DISPLAY_SIDE - 1, 1499, 0))  # clamped inside


def test_the_form_becomes_the_request_the_widgets_show():
    photo = make_photo(160, 120)
    state = PageState.for_photo("key", photo).with_prediction((ClickPoint(80, 60),), _prediction(120, 160))
    form = GenerateForm(mood="", keyword="forest", prompt="  ", safety=3, concept=" ", erased="none", steps=3.0,
                        guidance=5, strength=0.5, seed=42.0, random_seed=False, candidates=2.0, negative="blurry",
                        quality="sharp", scheduler="dpmpp_2m", candidate=1, grow=-2.0, feather=6.0, edit="subject")
    request = form.to_request(state, photo, photo_mood="calm, misty")
    assert np.array_equal(request.subject, state.prediction.masks[1])  # the chosen candidate, not the best
    assert request.points == [ClickPoint(80, 60)]
    assert (request.num_inference_steps, request.guidance_scale, request.strength, request.seed,
            request.num_candidates) == (3, 5.0, 0.5, 42, 2)
    assert isinstance(request.num_inference_steps, int) and isinstance(request.guidance_scale, float)
    assert (request.safety, request.erased, request.sld_concept, request.scheduler) == ("strong", None, None, "dpmpp_2m")
    assert (request.grow, request.feather, request.edit_subject) == (-2, 6, True)
    assert (request.keyword, request.mood, request.prompt) == ("forest", "calm, misty", None)
    assert (request.negative_prompt, request.prompt_2) == ("blurry", "sharp")
    validate_request(request, Settings())  # what the page sends passes the edge check

    typed = dataclasses.replace(form, mood=" rainy ", prompt=" a pine forest ", random_seed=True, erased=None)
    request = typed.to_request(state, photo, photo_mood="calm, misty")
    assert (request.mood, request.prompt, request.seed, request.erased) == ("rainy", "a pine forest", None, None)


def test_preview_tints_the_chosen_subject_after_grow_and_keeps_the_rest():
    photo = make_photo(160, 120)
    state = PageState.for_photo("key", photo).with_prediction((ClickPoint(120, 90),), _prediction(120, 160))
    untinted = preview(PageState.for_photo("key", photo), 160)  # no prediction yet: the photo itself
    assert untinted.size == photo.size and untinted.tobytes() == photo.tobytes()
    shown = np.asarray(preview(state, photo.width, candidate=1, grow=0)).astype(int)
    original = np.asarray(photo).astype(int)
    assert np.array_equal(shown[:60, :80], original[:60, :80])  # not candidate 1: the photo's own pixels
    assert (shown[60:80, 80:100] != original[60:80, 80:100]).any(axis=-1).all()  # candidate 1: tinted
    grown = np.asarray(preview(state, photo.width, candidate=1, grow=4)).astype(int)
    assert (grown[57, 100] != original[57, 100]).any() and (shown[57, 100] == original[57, 100]).all()


def test_candidate_choices_and_safety_text():
    assert candidate_choices(None) == []
    assert candidate_choices(_prediction(8, 8)) == [("1 (score 0.90)", 0), ("2 (score 0.50)", 1), ("3 (score 0.25)", 2)]
    assert candidate_choices(_prediction(8, 8, method="grabcut")) == [("GrabCut", 0)]
    assert safety_markdown(0) == "**Off**: no safety guidance"
    assert safety_markdown(3).startswith("**Hyp-Strong**: warm-up δ 7 (of 50 steps), s_S 2000")


@pytest.mark.parametrize("change, message", [
    (dict(edit_subject=True), r"^a mask already says what to repaint; leave out 'edit subject'$"),
    (dict(mask=None, subject=np.ones((10, 10), bool)), r"^the subject mask has shape \(10, 10\) but the photo is 160x120$"),
    (dict(feather=-1), r"^feather must be 0 or more, got -1$"),
    (dict(mask=None, points=[ClickPoint(80, 60)], mask_candidate=3), r"^mask candidate must be between 0 and 2, got 3$"),
    (dict(num_inference_steps=10, strength=0.05), r"^strength 0.05 is too low for 10 steps: no step would run$"),
])
def test_bad_requests_are_refused_at_the_edge_before_any_model(change, message):
    photo = make_photo()
    mask = half_mask(photo)
    request = dataclasses.replace(EditRequest(image=photo, mask=mask, prompt="x"), **change)
    # No model exists at these paths: only the edge check can answer, and it answers first.
    nowhere = Settings(sdxl_model="/no/such/sdxl", sam_checkpoint="/no/such/sam.pth", sam_auto_download=False,
                       ollama_host="http://127.0.0.1:9")
    with pytest.raises(ValueError, match=message):
        run_edit(request, nowhere, save=False)


def test_errors_are_one_line_and_keep_their_cause(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a photo")
    with pytest.raises(ValueError) as err:
        images.load_image(bogus)
    assert str(err.value) == "the file is not an image Backdrop can read (PNG, JPEG, WebP, ...)"
    assert err.value.__cause__ is not None  # chained: the log shows why Pillow refused it


def test_generate_reads_every_form_widget_by_name():
    import app

    settings = Settings()
    page = app.build_layout(settings)
    assert not page.demo.fns  # the layout wires nothing
    assert page.files.interactive is False  # the download box is an output, not an upload zone
    form = page.form()
    assert list(form) == [f.name for f in dataclasses.fields(GenerateForm)]
    for name, widget in form.items():
        # Gradio renders a closed accordion's widgets on first opening and re-applies their initial
        # values a frame later: a value set in that frame is lost. Nothing Generate reads sits there.
        parent = widget.parent
        while parent is not None:
            assert not (isinstance(parent, app.gr.Accordion) and parent.open is False), name
            parent = parent.parent
    app.wire(page, app.Handlers(settings, studio=None, publish=str))
    generate = [fn for fn in page.demo.fns.values() if (page.generate._id, "click") in fn.targets]
    assert len(generate) == 1 and generate[0].inputs_as_dict  # a dict by widget, not 20 values by position
    assert {block._id for block in generate[0].inputs} == {page.state._id, *(w._id for w in form.values())}


# --- brush, masks in and out, edge, captions, guidance (issue 18.4-18.5, page wiring) -------------

def _brushed_state(photo: Image.Image) -> PageState:
    return PageState.for_photo("key", photo).with_prediction((ClickPoint(40, 30),), _prediction(120, 160))


def test_a_stroke_from_the_page_is_mapped_to_the_photo_and_refused_when_unreadable():
    stroke = Stroke.from_page('{"brush": "remove from subject", "size": 10, "points": [[5, 6], [20, 6]]}', 2.0)
    assert stroke == Stroke(points=((9.5, 11.5), (39.5, 11.5)), width=20.0, add=False)
    for text, message in [('{"brush": "erase", "size": 10, "points": [[1, 2]]}', r"^unknown brush 'erase'"),
                          ('{"brush": "add to subject", "size": 0, "points": [[1, 2]]}', "could not be read"),
                          ('{"brush": "add to subject", "size": 5, "points": []}', "could not be read"),
                          ("not json", "could not be read")]:
        with pytest.raises(ValueError, match=message):
            Stroke.from_page(text, 1.0)


def test_strokes_add_and_remove_in_order_and_survive_a_new_click():
    photo = make_photo(160, 120)
    state = _brushed_state(photo)  # candidate 0: the top-left quarter, rows < 60 and columns < 80
    add = Stroke(points=((100.0, 20.0), (140.0, 20.0)), width=10.0, add=True)  # a bar outside it
    remove = Stroke(points=((40.0, 30.0),), width=20.0, add=False)  # a dot inside it
    state = dataclasses.replace(state, strokes=(add, remove))
    subject = state.subject(0)
    base = state.prediction.masks[0]
    assert subject[20, 95:146].all() and not subject[20, 94] and not subject[20, 146]  # round caps of r 5
    assert subject[10:31, 120].sum() == 10  # the bar is the brush size wide
    assert not subject[30, 31:50].any() and subject[30, 29] and subject[30, 51]  # the dot of r 10
    untouched = np.ones_like(base)
    untouched[10:31, 90:151] = untouched[19:42, 29:52] = False
    assert np.array_equal(subject[untouched], base[untouched])  # the rest is SAM's mask
    # A later stroke paints over an earlier one.
    readd = Stroke(points=((40.0, 30.0),), width=4.0, add=True)
    assert dataclasses.replace(state, strokes=(add, remove, readd)).subject(0)[30, 40]
    # A new click gives a new prediction; the strokes go on top of it as well.
    moved = _prediction(120, 160)
    moved.masks[0] = ~moved.masks[0]
    clicked = state.with_prediction(state.points + (ClickPoint(150, 110),), moved)
    assert clicked.strokes == (add, remove)
    again = clicked.subject(0)
    assert again[20, 120] and not again[30, 40] and again[100, 150] == moved.masks[0][100, 150]
    # The request carries the edited subject, and the preview tints it.
    request = GenerateForm(keyword="forest").to_request(state, photo)
    assert np.array_equal(request.subject, subject)
    shown = np.asarray(preview(state, photo.width)).astype(int)
    assert (shown[20, 120] != np.asarray(photo)[20, 120]).any() and (shown[30, 47] == np.asarray(photo)[30, 47]).all()
    assert dataclasses.replace(state, prediction=None).subject(0) is None  # no base: nothing to edit


def test_an_uploaded_mask_is_the_subject_until_a_click_and_comes_back_out_as_the_same_png(tmp_path):
    photo = make_photo(160, 120)
    repaint = np.zeros((120, 160), np.uint8)
    repaint[:, 70:] = 255  # white = repaint: the right part
    repaint[:10, :10] = 120  # grey below 50 % is kept
    path = tmp_path / "mask.png"
    Image.fromarray(repaint, "L").save(path)
    loaded = images.load_mask(path, photo.size)
    state = dataclasses.replace(PageState.for_photo("key", photo), uploaded=uploaded_subject(loaded, invert=False))
    assert state.subject(0).sum() == 70 * 120 and state.subject(0)[:, :70].all()
    inverted = uploaded_subject(loaded, invert=True)
    assert np.array_equal(inverted, ~state.subject(0))
    # The mask the edit repaints, as offered for download, is the uploaded one, byte for byte.
    out = tmp_path / "out.png"
    mask_png(repaint_mask(state, 0, 0, "background")).save(out)
    expected = np.where(repaint >= 128, 255, 0)
    assert np.array_equal(np.asarray(Image.open(out)), expected)
    assert np.array_equal(images.load_mask(out, photo.size) >= 0.5, loaded >= 0.5)  # reads back as --mask
    # Grow and "edit subject" are in it; a click's prediction replaces the uploaded mask.
    grown = repaint_mask(state, 0, 3, "subject")
    assert grown[:, :73].all() and not grown[:, 73:].any()
    clicked = state.with_prediction((ClickPoint(40, 30),), _prediction(120, 160))
    assert np.array_equal(clicked.subject(0), clicked.prediction.masks[0])
    assert repaint_mask(PageState.for_photo("key", photo), 0, 0, "background") is None


def test_edge_fast_captions_and_guidance_follow_the_page():
    photo = make_photo(160, 120)
    state = _brushed_state(photo)
    for edge in ("matte", "feather", "hard"):
        request = GenerateForm(keyword="forest", edge=edge).to_request(state, photo)
        assert request.edge == edge
        validate_request(request, Settings())
    assert GenerateForm().edge == "matte"
    # The Fast dropdown: "off" sends no preset, a preset's name is sent as it is.
    assert GenerateForm(keyword="forest").to_request(state, photo).fast is None
    request = GenerateForm(keyword="forest", fast="lightning-4step").to_request(state, photo)
    assert request.fast == "lightning-4step"
    validate_request(request, Settings())
    # Best first with scores; a candidate the safety check withheld has neither image nor caption.
    assert captions([7, 5], [-0.01234, -0.5]) == ["seed 7 · score -0.012", "seed 5 · score -0.500"]
    assert captions([], []) == [] and captions([3], []) == ["seed 3"]
    assert guidance_limits(0, 0.5) == (0.0, 0.5)
    assert guidance_limits(1, 0.5) == (1.0, 1.0) and guidance_limits(4, 7.5) == (1.0, 7.5)


def test_generate_copes_with_withheld_results_and_shows_seed_and_score():
    import app
    from pipelines.types import EditResult

    photo = make_photo(160, 120)

    class FakeWorkbench:
        def __init__(self, result):
            self.result, self.requests = result, []

        def image(self, key):
            return photo

        def mood(self, key):
            raise AssertionError("a typed prompt needs no mood")

        def edit(self, request, session, on_progress):
            self.requests.append(request)
            on_progress("remote", 0, 0, None)
            return self.result

    blank = np.zeros((120, 160), np.float32)
    shown = Image.new("RGB", (160, 120))
    result = EditResult(images=[shown, shown], seeds=[9, 8], prompt="p", prompt_tokens=3, prompt_2="p2", prompt_2_tokens=4, mood="", negative_prompt="",
                        mask=blank, scores=[-0.1, -0.2], paths=["/a.png", "/b.png"])
    studio = FakeWorkbench(result)
    handlers = app.Handlers(Settings(), studio, publish=lambda path: "served" + path)
    state = _brushed_state(photo)
    form = GenerateForm(prompt="a forest", edge="hard")
    stages = []
    out = handlers.generate(state, form, "s", lambda *a, desc: stages.append(desc))
    assert out[0] == [("served/a.png", "seed 9 · score -0.100"), ("served/b.png", "seed 8 · score -0.200")]
    assert out[4] == 9 and studio.requests[0].edge == "hard" and stages == ["Running on the cluster"]
    assert out[9] == "served/a.png"  # the best one large
    studio.result = EditResult(images=[], seeds=[], prompt="p", prompt_tokens=3, prompt_2="p2", prompt_2_tokens=4, mood="", negative_prompt="",
                               mask=blank, notices=["withheld"])
    out = handlers.generate(state, form, "s", lambda *a, desc: None)
    assert out[0] == [] and out[1] is None and out[3] == "p" and out[5] == "- withheld" and out[8] == "p2"
    assert out[9] is None
    with pytest.raises(app.gr.Error, match="click the subject"):
        handlers.generate(PageState.for_photo("key", photo), form, "s", lambda *a, desc: None)


def test_with_a_ray_address_the_studio_sends_the_edit_to_the_cluster(monkeypatch, tiny_settings):
    from pipelines.entry import cluster
    from pipelines.entry.workbench import Workbench

    sent = []

    def run_edit_remote(request, settings, on_progress=None, should_cancel=None):
        sent.append((request, settings.ray_address, should_cancel()))
        on_progress("remote", 0, 0, None)
        return "result"

    monkeypatch.setattr(cluster, "run_edit_remote", run_edit_remote)
    studio = Workbench(dataclasses.replace(tiny_settings, ray_address="ray://head:10001"))
    photo = make_photo(160, 120)
    request = GenerateForm(prompt="a forest").to_request(_brushed_state(photo), photo)
    progress = []
    assert studio.edit(request, "me", lambda *a: progress.append(a)) == "result"
    assert sent == [(request, "ray://head:10001", False)] and progress == [("remote", 0, 0, None)]
    assert studio.cancel("me") is False  # finished: nothing left to cancel


def test_background_and_canvas_choices_become_the_command_lines_values(tmp_path):
    photo = make_photo(160, 120)
    state = _brushed_state(photo)
    picture = tmp_path / "brand.png"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(picture)
    base = GenerateForm(keyword="forest")
    cases = [
        (dict(), "generate", None, "center"),
        (dict(background="transparent"), "transparent", None, "center"),
        (dict(background="colour", background_color="rgba(255, 128, 0, 1)"), "#ff8000", None, "center"),
        (dict(background="colour", background_color="#1E90FF"), "#1e90ff", None, "center"),
        (dict(background="picture", background_picture=str(picture)), str(picture), None, "center"),
        (dict(background="blur"), "blur", None, "center"),
        (dict(background="blur", blur_radius=24.0), "blur:24", None, "center"),
        (dict(canvas="16:9", place="left"), "generate", "16:9", "left"),
        (dict(background="colour", canvas="custom", canvas_size=" 200x150 ", place="top"), "#ffffff", "200x150", "top"),
    ]
    for change, background, canvas, place in cases:
        form = dataclasses.replace(base, **change)
        request = form.to_request(state, photo)
        assert (request.background, request.canvas, request.place) == (background, canvas, place), change
        assert form.plain == (background != "generate")
        validate_request(request, Settings())  # what the page sends passes the edge check
    for change, message in [(dict(background="picture"), "^upload a picture for the background$"),
                            (dict(canvas="custom", canvas_size=" "), "^type the canvas size as WxH"),
                            (dict(background="colour", background_color="nope"), "^unknown colour 'nope'$")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(base, **change).to_request(state, photo)
    # A size that cannot hold the photo is the edge check's to refuse, with the smallest that can.
    small = dataclasses.replace(base, canvas="custom", canvas_size="100x100").to_request(state, photo)
    with pytest.raises(ValueError, match="the smallest that can is 160x120"):
        validate_request(small, Settings())


# --- the page's layout: first view, sections, examples, status (issue 23) -------------------------

def test_sections_are_mounted_at_load_and_shut_by_the_page_and_the_first_view_is_outside_them():
    import app
    import app_layout

    settings = Settings()
    page = app.build_layout(settings)
    sections = [b for b in page.demo.blocks.values() if isinstance(b, app.gr.Accordion)]
    assert len(sections) == 4
    for section in sections:
        # Built open, so Gradio mounts their widgets at load (a closed one resets them on first opening)...
        assert section.open is True and app_layout.SECTION_CLASS in section.elem_classes, section.label
    for name in ("photo", "keyword", "safety", "generate", "best", "gallery", "files", "status"):
        parent = getattr(page, name).parent
        while parent is not None:
            assert not isinstance(parent, app.gr.Accordion), name  # the first view is in no section
            parent = parent.parent
    app.wire(page, app.Handlers(settings, studio=None, publish=str))
    # ... and the page's load event shuts them.
    assert [fn for fn in page.demo.fns.values() if fn.js == app.SHUT_SECTIONS_JS and fn.fn is None]
    # The edit's progress shows over the result only.
    generate = next(fn for fn in page.demo.fns.values() if (page.generate._id, "click") in fn.targets)
    assert [block._id for block in generate.show_progress_on] == [page.best._id]


def test_an_example_loads_its_photo_and_mask_and_the_pull_button_shows_only_when_a_model_is_missing():
    import app
    from pipelines.prompting import OllamaUnavailable

    class Client:
        missing: list | Exception = []

        def missing_models(self, models):
            if isinstance(self.missing, Exception):
                raise self.missing
            return self.missing

    class Studio:
        photos: dict = {}
        client_ = Client()

        def add_photo(self, image):
            self.photos["k"] = image
            return "k"

        def image(self, key):
            return self.photos[key]

        def client(self):
            return self.client_

        def status_lines(self):
            return ["SAM ok", "Ollama ok", "SDXL ok"]

    studio = Studio()
    handlers = app.Handlers(Settings(), studio, publish=str)
    photo, mask = app.EXAMPLES / "astronaut.jpg", app.EXAMPLES / "astronaut-mask.png"
    state, display, candidates, mood, notice = handlers.example(str(photo), str(mask), False, 0)
    white = np.asarray(Image.open(mask).convert("L")) >= 128  # white = repaint
    assert state.key == "k" and np.array_equal(state.uploaded, ~white) and state.has_subject
    assert display.size == (512, 512) and notice == "Example loaded with its mask: press Generate."
    for name, label, background, _ in app.EXAMPLE_PHOTOS:
        assert (app.EXAMPLES / f"{name}.jpg").is_file() and (app.EXAMPLES / f"{name}-mask.png").is_file(), name
    assert app.EXAMPLE_PHOTOS[0][2] != "generate"  # the first one needs no model

    status, _, pull = handlers.load()
    assert status == "- SAM ok\n- Ollama ok\n- SDXL ok" and pull.visible is False
    studio.client_.missing = ["llava"]
    assert handlers.load()[2].visible is True
    studio.client_.missing = OllamaUnavailable("not running")
    assert handlers.load()[2].visible is False  # nothing to pull into: the status line says start it
