"""The page's logic without a browser: session state, the Generate form, previews, checks at the edge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from pipelines import images
from pipelines.editing import run_edit, validate_request
from pipelines.masking import MaskPrediction
from pipelines.page import DISPLAY_SIDE, GenerateForm, PageState, candidate_choices, preview, safety_markdown
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
    assert preview(PageState.for_photo("key", photo), 160) is not None
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
    mask = np.zeros((120, 160), np.float32)
    mask[:, 80:] = 1
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
