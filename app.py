"""Backdrop's page: Gradio widgets and their wiring, nothing else.

    python app.py                       # http://127.0.0.1:7860
    python app.py --listen --port 8080 --auth me:secret

Read it in three parts, each alone: `build_layout` places the widgets and returns them as a `Page`;
`Handlers` turns widget values into calls on `pipelines.entry.workbench.Workbench` (background work per photo)
and `pipelines.entry.page` (typed session state, the Generate form, previews), and results back into
widget values; `wire` connects events to handlers. Only this file and `app_api.py` know about
Gradio, and only they turn errors into one-line `gr.Error`s. Models never live in session state: the state
holds the photo's key, the clicks and the current SAM prediction.

The endpoints for programs (`/edit`, `/mask`, `/prompt`) are `app_api.py`'s; the brush's script is
`app_brush.js`.

Results are handed to the session that made them only: each saved PNG is copied into Gradio's
cache under a name derived from its content (unguessable) and that URL goes to the session; the
output folder itself is never served.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations
# (gr.SelectData, gr.Request, gr.Progress) at run time to know what to pass them.
import argparse
import contextlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import gradio as gr
from PIL import Image

import app_api
from pipelines.errors import one_line
from pipelines.entry.page import (BACKGROUNDS, BRUSHES, CANVASES, GenerateForm, PageState, Stroke, candidate_choices, captions,
                            found_prediction,
                            guidance_limits, mask_png, notices_markdown, preview, repaint_mask,
                            safety_markdown, uploaded_subject)
from pipelines.entry.page import choices as option_choices
from pipelines.entry.page import slider as option_slider
from pipelines.settings import SAFETY_LEVELS, Settings, add_arguments
from pipelines.types import edit_option

STAGES = {"mask": "Masking", "mood": "Reading the mood (LLaVA)", "prompt": "Writing the prompt (Llama 2)",
          "download": "Downloading SDXL", "load": "Loading SDXL", "diffusion": "Generating", "save": "Saving",
          "remote": "Running on the cluster"}
MASK_HELP = ("A black-and-white image the photo's size. **White = repaint, black = keep**, as `--mask` and "
             "inpainting tools read it (grey counts from 50 %). Masks where white is the *subject* (cutouts, "
             "SAM, rembg): tick **Invert**. A click starts over from SAM; *Clear points* brings the mask back.")

# The brush (app_brush.js): a drag on the photo (while a brush is picked) is drawn on a canvas over
# it and, on release, sent as JSON to the hidden #stroke box; the click that ends a drag does not
# reach SAM. Coordinates are the preview's own pixels, as Gradio's select event gives them (the img
# is centred, object-fit contain or scale-down). Handed to `launch(js=...)`: one arrow function.
# Not Gradio 6's gr.ImageEditor, though its brush would do (measured on 6.31 in headless Chromium:
# a stroke comes back as a layer at the background's size with alpha only 0 or 255, so exact).
# The photo here is also SAM's click target, and its preview is replaced after every click and
# every stroke; setting an ImageEditor's value clears its layers, and its own tools (brush,
# eraser, pan, zoom, layers) take the press that is a SAM click on this page. Switching means
# turning each layer change into `PageState.strokes` and giving clicks a tool of their own.
BRUSH_JS = Path(__file__).parent / "app_brush.js"
EXAMPLES = Path(__file__).parent / "examples"
# (file name, label, Background, keyword): plain backgrounds first, as they need no model at all.
EXAMPLE_PHOTOS = (("astronaut", "Astronaut on white", "colour", ""),
                  ("chelsea", "Cat, background blurred", "blur", ""),
                  ("coffee", "Coffee on marble (SDXL)", "generate", "marble counter"))


# --- layout --------------------------------------------------------------------------------------

@dataclass
class Page:
    """The page's widgets. The names of the fields Generate reads match `GenerateForm`'s."""

    demo: gr.Blocks
    state: gr.State  # PageState
    results: gr.State  # list[str]: this session's last results, as handed to it
    photo: gr.Image
    click_label: gr.Radio
    undo: gr.Button
    clear: gr.Button
    find_subject: gr.Button
    brush: gr.Radio
    brush_size: gr.Slider
    undo_stroke: gr.Button
    clear_strokes: gr.Button
    stroke: gr.Textbox  # hidden: the brush's script writes each finished stroke here (BRUSH_JS)
    candidate: gr.Radio
    grow: gr.Slider
    feather: gr.Slider
    edit: gr.Radio
    edge: gr.Radio
    background: gr.Radio
    background_color: gr.ColorPicker
    background_picture: gr.File
    blur_radius: gr.Slider
    canvas: gr.Radio
    canvas_size: gr.Textbox
    place: gr.Radio
    mask_upload: gr.File
    mask_invert: gr.Checkbox
    mask_download: gr.Button
    mask_file: gr.File
    mood: gr.Textbox
    keyword: gr.Textbox
    write: gr.Button
    prompt: gr.Textbox
    tokens: gr.Markdown
    safety: gr.Slider
    safety_info: gr.Markdown
    erased: gr.Dropdown
    fast: gr.Dropdown
    generate: gr.Button
    cancel: gr.Button
    concept: gr.Textbox
    steps: gr.Slider
    guidance: gr.Slider
    strength: gr.Slider
    seed: gr.Number
    random_seed: gr.Checkbox
    candidates: gr.Slider
    negative: gr.Textbox
    quality: gr.Textbox
    prompt_2: gr.Textbox  # read-only: what the second text encoder read in the last edit
    scheduler: gr.Dropdown
    notices: gr.Markdown
    best: gr.Image  # the result picked (at first the best), large
    gallery: gr.Gallery  # every candidate, best first, as thumbnails
    before_after: gr.ImageSlider
    files: gr.File
    status: gr.Markdown
    pull: gr.Button
    examples: gr.Column  # where `wire` puts the example photos (Handlers.example)

    def form(self) -> dict:
        """The widgets Generate reads, by `GenerateForm` field name."""
        return {f.name: getattr(self, f.name) for f in fields(GenerateForm)}


def _hand_upload_to_our_loader(photo: gr.Image) -> None:
    """Make a `gr.Image` pass the uploaded file's path to Backdrop's own loader untouched.

    Gradio's `Image.preprocess` decodes and re-encodes an upload before the handler sees it, which
    drops 16-bit depth, answers a non-image with a multi-line internal error, and would decode a
    decompression bomb. `pipelines.images.load_image` does all of that right, with one-line errors.
    (Set on the instance: a subclass would make Gradio write an `app.pyi` stub beside this file.)
    """
    photo.preprocess = lambda payload: None if payload is None else payload.path


# The page's sections (mask tools, background and canvas, prompt, advanced) are built open and shut
# by the page's load event. Gradio 6 mounts a closed accordion's widgets only when it is first
# opened and re-applies their starting values a frame later: a value set in that frame (a slider
# moved at once, easily hit on a busy machine) snapped back unseen, and Generate read the old one.
# Built open, every widget is mounted at load, and opening a section later only shows it.
SECTION_CLASS = "shut-at-load"
SHUT_SECTIONS_JS = (f"() => {{ document.querySelectorAll('.{SECTION_CLASS} > button.label-wrap.open')"
                    ".forEach((b) => b.click()); document.body.dataset.sectionsShut = 'yes'; }")
# The status lines compact at the top; the candidates as a strip of thumbnails (Gradio 6's gallery
# stretches a lone item to the full width, whatever `columns` says).
CSS = """
#status { font-size: 0.9em; } #status ul { margin: 0; } #status li { margin: 0; }
#title h1 { margin: 0; font-size: 1.5em; } #title p { margin: 0; }
#candidates-strip .grid-container { grid-template-columns: repeat(auto-fill, 96px) !important;
                                    grid-auto-rows: 72px !important; }
#candidates-strip .thumbnail-item { width: 96px; height: 72px; }
"""


def build_layout(settings: Settings) -> Page:
    """Place the widgets; no event is wired here.

    The first view (1366x768 without scrolling) holds what an edit needs: the photo, the background
    keyword, the safety slider, Generate and the result with its download; what is missing to run
    (SAM, Ollama, SDXL) stands above them, one line each. Everything else is in named sections
    under Generate, shut at load (`SECTION_CLASS`).
    """
    from pipelines.diffusion.few_step import FAST_PRESETS
    from pipelines.prompting import MAX_TOKENS, default_negative_prompt, quality_words

    min_level = SAFETY_LEVELS.index(settings.min_safety)
    w = {}

    def section(title: str, elem_id: str) -> gr.Accordion:
        return gr.Accordion(title, open=True, elem_id=elem_id, elem_classes=[SECTION_CLASS])

    # Every preview and served result is a file in Gradio's cache: checked hourly, a file older than
    # `cache_hours` goes (a page open that long shows broken images; its saved photos are kept).
    hours = settings.cache_hours * 3600
    with gr.Blocks(title="Backdrop", delete_cache=(min(3600, hours), hours)) as demo:
        w["state"], w["results"] = gr.State(PageState()), gr.State([])
        with gr.Row(equal_height=False):
            gr.Markdown("# Backdrop\nUpload a photo, click the subject, say what the new background should be.",
                        elem_id="title")
            # What works and what is missing, one line each with its fix (filled at load).
            w["status"] = gr.Markdown(elem_id="status", min_width=300)
            w["pull"] = gr.Button("Pull missing Ollama models", size="sm", elem_id="pull", scale=0, min_width=200,
                                visible=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                # PNG, not Gradio's default lossy WebP: the preview shows the mask's edge as it is.
                w["photo"] = gr.Image(label="Photo (drop one, then click the subject)", type="filepath",
                                      sources=["upload", "clipboard"], elem_id="photo", height=340, format="png")
                _hand_upload_to_our_loader(w["photo"])
                with gr.Row():
                    w["keyword"] = gr.Textbox(label="Background keyword", elem_id="keyword",
                                              placeholder="forest, galaxy, 비 오는 밤거리 ...", min_width=160)
                    w["safety"] = gr.Slider(min_level, len(SAFETY_LEVELS) - 1, value=min_level, step=1,
                                            label="Safety", elem_id="safety", min_width=160)
                w["safety_info"] = gr.Markdown(safety_markdown(min_level), elem_id="safety-info")
                with gr.Row():
                    w["generate"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                    w["cancel"] = gr.Button("Cancel", elem_id="cancel", scale=1)
                w["stroke"] = gr.Textbox(visible="hidden", elem_id="stroke")
                w["examples"] = gr.Column(elem_id="examples")  # filled by `wire` (gr.Examples wires a click)
                with section("Mask tools: find subject, points, brush, candidates, edge, mask files", "mask-tools"):
                    # The subject's row: an automatic "find the subject" button belongs at its front.
                    with gr.Row(elem_id="subject-row"):
                        w["find_subject"] = gr.Button("Find subject", size="sm", elem_id="find-subject")
                        w["click_label"] = gr.Radio(["subject", "not subject"], value="subject", label="Click marks")
                        w["undo"] = gr.Button("Undo last point", size="sm")
                        w["clear"] = gr.Button("Clear points", size="sm")
                    w["candidate"] = gr.Radio([], label="Mask candidate", type="value", elem_id="candidate")
                    with gr.Row():
                        # interactive=True: no event reads them (the brush script does), and Gradio
                        # renders an input that no event reads as read-only.
                        w["brush"] = gr.Radio(["off", *BRUSHES], value="off", label="Brush (drag on the photo)",
                                              elem_id="brush", interactive=True)
                        w["brush_size"] = gr.Slider(2, 200, value=24, step=1, label="Brush size",
                                                    elem_id="brush-size", interactive=True)
                    with gr.Row():
                        w["undo_stroke"] = gr.Button("Undo stroke", size="sm", elem_id="undo-stroke")
                        w["clear_strokes"] = gr.Button("Clear strokes", size="sm")
                    with gr.Row():
                        w["grow"] = gr.Slider(**option_slider("grow"), label="Grow / shrink", elem_id="grow")
                        w["feather"] = gr.Slider(**option_slider("feather"), label="Feather", elem_id="feather")
                    with gr.Row():
                        w["edit"] = gr.Radio(["background", "subject"], value=GenerateForm.edit, label="Edit",
                                             elem_id="edit")
                        w["edge"] = gr.Radio(**option_choices("edge"), label="Edge", elem_id="edge",
                                             info="matte: soft edges (hair) lose the old background")
                    with gr.Row():
                        with gr.Column():
                            w["mask_upload"] = gr.File(label="Mask (optional)", file_types=["image"],
                                                       type="filepath", elem_id="mask-upload", height=120)
                            w["mask_invert"] = gr.Checkbox(False, label="Invert (white = subject)",
                                                           elem_id="mask-invert")
                            gr.Markdown(MASK_HELP)
                        with gr.Column():
                            w["mask_download"] = gr.Button("Mask as PNG", size="sm", elem_id="mask-download")
                            w["mask_file"] = gr.File(label="Mask (white = repaint)", elem_id="mask-file",
                                                     interactive=False, height=120)
                with section("Background and canvas: colour, picture, blur, larger frame", "background-canvas"):
                    w["background"] = gr.Radio(list(BACKGROUNDS), value=GenerateForm.background, label="Background",
                                               elem_id="background",
                                               info="all but generate need no keyword and no SDXL")
                    with gr.Row():
                        w["background_color"] = gr.ColorPicker(GenerateForm.background_color, label="Colour", elem_id="background-color")
                        w["background_picture"] = gr.File(label="Picture (covers the frame)", file_types=["image"],
                                                          type="filepath", elem_id="background-picture", height=120)
                        w["blur_radius"] = gr.Slider(0, 200, value=GenerateForm.blur_radius, step=1, label="Blur radius (0 = from the size)",
                                                     elem_id="blur-radius")
                    w["canvas"] = gr.Radio(list(CANVASES), value=GenerateForm.canvas, label="Canvas", elem_id="canvas",
                                           info="a larger frame; what the photo does not cover is repainted")
                    with gr.Row():
                        w["canvas_size"] = gr.Textbox(label="Custom size", placeholder="WxH, e.g. 1920x1080",
                                                      elem_id="canvas-size")
                        w["place"] = gr.Radio(**option_choices("place"), label="Photo on the canvas",
                                              elem_id="place")
                with section("Prompt and mood: what LLaVA read, what Llama 2 writes", "prompt-mood"):
                    w["mood"] = gr.Textbox(label="Mood", placeholder="filled by LLaVA after upload; editable",
                                           elem_id="mood")
                    w["write"] = gr.Button("Write prompt", size="sm")
                    w["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                             placeholder="empty: written from the keyword and mood when you generate")
                    w["tokens"] = gr.Markdown(f"0 / {MAX_TOKENS} tokens", elem_id="tokens")
                with section("Advanced: steps, seed, candidates, sampler, safety concept, fast LoRA", "advanced"):
                    with gr.Row():
                        w["candidates"] = gr.Slider(**option_slider("num_candidates"), label="Candidates", elem_id="candidates")
                        w["steps"] = gr.Slider(**option_slider("num_inference_steps"), label="Steps", elem_id="steps")
                    with gr.Row():
                        w["guidance"] = gr.Slider(**option_slider("guidance_scale"), label="Guidance", elem_id="guidance")
                        w["strength"] = gr.Slider(**option_slider("strength"), label="Strength", elem_id="strength")
                    with gr.Row():
                        low, high = edit_option("seed").range
                        w["seed"] = gr.Number(GenerateForm.seed, label="Seed", precision=0, minimum=low, maximum=high,
                                              elem_id="seed")
                        w["random_seed"] = gr.Checkbox(GenerateForm.random_seed, label="Random seed", elem_id="random-seed")
                    with gr.Row():
                        presets = [(p.label, name) for name, p in FAST_PRESETS.items()]
                        w["fast"] = gr.Dropdown([("Off", "off"), *presets], value=GenerateForm.fast, label="Fast", elem_id="fast",
                                                info="a few-step LoRA: sets its own steps, guidance and sampler")
                        w["scheduler"] = gr.Dropdown(**option_choices("scheduler"), label="Scheduler",
                                                     elem_id="scheduler")
                        w["erased"] = gr.Dropdown([GenerateForm.erased], value=GenerateForm.erased, label="Erased encoder", elem_id="erased")
                    w["concept"] = gr.Textbox(label="Safety concept", elem_id="concept",
                                              placeholder="default: the SLD paper's concept list")
                    w["negative"] = gr.Textbox(default_negative_prompt(), label="Negative prompt", lines=2,
                                               elem_id="negative")
                    w["quality"] = gr.Textbox(quality_words(), label="Quality words", lines=2, elem_id="quality")
                    w["prompt_2"] = gr.Textbox(label="Prompt 2 as used (the prompt, then the quality words that fit)",
                                               interactive=False, lines=2, elem_id="prompt-2")
            with gr.Column(scale=1, min_width=320, elem_id="result-area"):
                with gr.Tabs(elem_id="result-tabs"):
                    with gr.Tab("Result", elem_id="result-tab"):
                        # The best candidate large (the edit's one progress bar shows here, naming
                        # the stage and the step: Generate's show_progress_on), every candidate below.
                        w["best"] = gr.Image(label="Result", format="png", type="filepath", interactive=False,
                                             elem_id="result", height=340)
                    with gr.Tab("Before / after", elem_id="before-after-tab"):
                        w["before_after"] = gr.ImageSlider(label="Before / after (the result picked)", type="pil",
                                                           format="png", interactive=False, elem_id="before-after",
                                                           height=340)
                with gr.Row(equal_height=True):
                    w["gallery"] = gr.Gallery(label="Candidates, best first (pick one)", format="png",
                                              columns=4, height=100, elem_id="candidates-strip", scale=3,
                                              interactive=False, allow_preview=False, object_fit="contain")
                    # An output only: without interactive=False Gradio draws an upload zone here.
                    w["files"] = gr.File(label="Download (PNG)", file_count="multiple", elem_id="downloads",
                                         interactive=False, height=100, scale=2, min_width=200)
                w["notices"] = gr.Markdown(elem_id="notices")
    return Page(demo=demo, **w)


# --- handlers ------------------------------------------------------------------------------------

def _candidates(state: PageState) -> gr.Radio:
    choices = candidate_choices(state.prediction)
    return gr.Radio(choices=choices, value=0 if choices else None)


class Handlers:
    """What each event does, on typed values; the only place that raises `gr.Error`."""

    def __init__(self, settings: Settings, studio, publish: Callable[[str], str]):
        """`publish(path)` hands a saved file to the session and returns the path it is served from."""
        self.settings, self.studio, self.publish = settings, studio, publish

    def upload(self, path: str | None):
        """-> state, photo, candidate, mood, notices, mask_upload (a new photo drops the old mask and
        strokes). Starts SAM's embedding and LLaVA's mood."""
        from pipelines.images import load_image

        if path is None:
            return PageState(), None, _candidates(PageState()), "", "", None
        try:
            image = load_image(path, self.settings.max_image_pixels)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        state = PageState.for_photo(self.studio.add_photo(image), image)
        return state, state.display, _candidates(state), "", "Click the subject.", None

    def example(self, path: str, mask: str | None, invert: bool, grow: int):
        """-> state, photo, candidate, mood, notices after an example (a photo and its mask) was picked."""
        state, display, candidates, mood, _, _ = self.upload(path)
        if mask is not None:
            state, display, candidates = self.use_mask(state, mask, invert, grow)
        return state, display, candidates, mood, "Example loaded with its mask: press Generate."

    def mood(self, state: PageState, mood: str):
        """-> mood, notices, once LLaVA has read the photo (skipped when a mood was typed)."""
        if state.key is None or (mood or "").strip():
            return gr.skip(), gr.skip()
        result = self.studio.mood(state.key)
        # Keep the "Click the subject." hint unless LLaVA has something to say (a fallback).
        return result.mood, notices_markdown(result.notices) if result.notices else gr.skip()

    def click(self, state: PageState, label: str, candidate: int | None, grow: int, evt: gr.SelectData):
        """-> state, photo, candidate, notices after a click on the photo."""
        if state.key is None:
            raise gr.Error("upload a photo first")
        image = self.studio.image(state.key)
        points = state.click(image, evt.index, subject=(label == "subject"))
        previous = state.prediction
        # SAM's demo feeds the last low-res logits back, so each click refines the mask it sees.
        mask_input = previous.next_mask_input(candidate or 0) if previous is not None else None
        try:
            prediction = self.studio.predict(state.key, list(points), mask_input)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        state = state.with_prediction(points, prediction)
        return (state, preview(state, image.width, 0, grow), _candidates(state),
                notices_markdown(prediction.notices))

    def undo(self, state: PageState, grow: int):
        """-> state, photo, candidate without the last click."""
        if state.key is None:
            return gr.skip(), gr.skip(), gr.skip()
        points = state.points[:-1]
        positive = any(p.label == 1 for p in points)
        state = state.with_prediction(points, self.studio.predict(state.key, list(points)) if positive else None)
        return state, preview(state, self.studio.image(state.key).width, 0, grow), _candidates(state)

    def clear(self, state: PageState, grow: int):
        """-> state, photo, candidate with no clicks (an uploaded mask shows again)."""
        if state.key is None:
            return gr.skip(), gr.skip(), gr.skip()
        state = state.with_prediction((), None)
        return state, self._preview(state, 0, grow), _candidates(state)

    def find_subject(self, state: PageState, grow: int, progress=gr.Progress()):
        """-> state, photo, candidate, notices with the subject model's subject (no click), which
        clicks and the brush then refine. The first use may download the model (progress in bytes)."""
        from pipelines.downloads import format_progress

        if state.key is None:
            raise gr.Error("upload a photo first")

        def on_download(done: int, total: int) -> None:  # "Downloading the subject model 42 / 179 MB"
            progress((done, total) if total else None, desc=f"Downloading the subject model {format_progress(done, total)}")

        try:
            found = self.studio.find_subject(state.key, on_download)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        model, notices = self.studio.subject_model()
        notices = [*notices, f"subject found by {model.name}: click to refine it, or paint with the brush"]
        state = state.with_prediction((), found_prediction(found, notices))
        return (state, preview(state, self.studio.image(state.key).width, 0, grow), _candidates(state),
                notices_markdown(notices))

    def refine(self, state: PageState, candidate: int | None, grow: int):
        """-> photo, after another candidate or grow / shrink was picked."""
        if state.key is None or not state.has_subject:
            return gr.skip()
        return self._preview(state, candidate, grow)

    def stroke(self, state: PageState, text: str, candidate: int | None, grow: int):
        """-> state, photo after one more brush stroke (JSON from the page's brush script)."""
        if state.key is None:
            raise gr.Error("upload a photo first")
        if not state.has_subject:
            raise gr.Error("click the subject or upload a mask first, then paint")
        try:
            stroke = Stroke.from_page(text, self.studio.image(state.key).width / state.display.width)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        state = replace(state, strokes=state.strokes + (stroke,))
        return state, self._preview(state, candidate, grow)

    def undo_stroke(self, state: PageState, candidate: int | None, grow: int, keep: int = -1):
        """-> state, photo without the last brush stroke (`keep=0`: without any)."""
        if state.key is None or not state.strokes:
            return gr.skip(), gr.skip()
        state = replace(state, strokes=state.strokes[:keep])
        return state, self._preview(state, candidate, grow)

    def clear_strokes(self, state: PageState, candidate: int | None, grow: int):
        return self.undo_stroke(state, candidate, grow, keep=0)

    def use_mask(self, state: PageState, path: str | None, invert: bool, grow: int):
        """-> state, photo, candidate after a mask was uploaded, removed or inverted. An uploaded
        mask replaces the clicks (read as the command line's `--mask`: white = repaint)."""
        from pipelines.images import load_mask

        if state.key is None:
            if path is None:
                return gr.skip(), gr.skip(), gr.skip()
            raise gr.Error("upload a photo first")
        if path is None:
            state = replace(state, uploaded=None)
        else:
            try:
                loaded = load_mask(path, self.studio.image(state.key).size)
            except ValueError as exc:
                raise gr.Error(str(exc)) from exc
            state = replace(state.with_prediction((), None), uploaded=uploaded_subject(loaded, invert))
        return state, self._preview(state, 0, grow), _candidates(state)

    def mask_file(self, state: PageState, candidate: int | None, grow: int, edit: str) -> str:
        """-> mask_file: the mask an edit would repaint now, as a PNG served to this session only."""
        import tempfile
        from pathlib import Path

        mask = None if state.key is None else repaint_mask(state, candidate, grow, edit)
        if mask is None:
            raise gr.Error("click the subject or upload a mask first")
        with tempfile.TemporaryDirectory(prefix="backdrop-mask-") as folder:
            path = Path(folder) / "backdrop-mask.png"
            mask_png(mask).save(path)
            return self.publish(str(path))  # a copy in Gradio's cache, under a content-derived name

    def guidance(self, position: int, guidance: float) -> gr.Slider:
        """-> guidance: its minimum (and value) raised while a safety preset is on."""
        minimum, value = guidance_limits(position, guidance)
        return gr.Slider(minimum=minimum, value=value)

    def _preview(self, state: PageState, candidate: int | None, grow: int) -> Image.Image:
        return preview(state, self.studio.image(state.key).width, candidate, grow)

    def write_prompt(self, keyword: str, mood: str):
        """-> prompt, notices."""
        try:
            result = self.studio.write_prompt(keyword, mood)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return result.prompt, notices_markdown(result.notices)

    def tokens(self, prompt: str) -> str:
        from pipelines.prompting import MAX_TOKENS

        return f"{self.studio.count_tokens(prompt or '')} / {MAX_TOKENS} tokens"

    def generate(self, state: PageState, form: GenerateForm, session: str, progress: gr.Progress):
        """-> gallery, before_after, files, prompt, seed, notices, mood, results, prompt_2, best."""
        from pipelines.downloads import format_progress
        from pipelines.errors import Cancelled, GpuOutOfMemory

        if state.key is None:
            raise gr.Error("upload a photo first")
        if not state.has_subject:
            raise gr.Error("click the subject (or upload a mask) first")
        image = self.studio.image(state.key)
        typed = (form.mood or "").strip() or (form.prompt or "").strip()
        # Usually ready since the upload; a plain background needs no mood.
        photo_mood = None if typed or form.plain else self.studio.mood(state.key).mood
        try:
            request = form.to_request(state, image, photo_mood)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

        def on_progress(stage, i, n, preview_image):
            if stage == "download":  # i of n bytes: "Downloading SDXL 2.1 / 6.9 GB"
                progress((i, n) if n else None, desc=f"{STAGES[stage]} {format_progress(i, n)}")
                return
            progress((i, n) if n else None, desc=f"{STAGES[stage]}: step {i}/{n}" if n else STAGES[stage])

        try:
            result = self.studio.edit(request, session, on_progress)
        except Cancelled:
            gr.Warning("Cancelled.")
            return (gr.skip(),) * 10
        except (ValueError, GpuOutOfMemory, RuntimeError, OSError) as exc:
            raise gr.Error(one_line(exc)) from exc
        # Images, seeds, scores and paths are aligned and best first; the safety check may have
        # withheld some (or all) of the candidates asked for.
        served = [self.publish(str(p)) for p in result.paths]
        gallery = list(zip(served, captions(result.seeds, result.scores)))
        first = (image, result.images[0]) if result.images else None
        return (gallery, first, served, result.prompt, result.seeds[0] if result.seeds else gr.skip(),
                notices_markdown(result.notices), result.mood or gr.skip(), served, result.prompt_2,
                served[0] if served else None)

    def select_result(self, state: PageState, results: list[str], evt: gr.SelectData):
        """-> best, before_after for the picked result."""
        if state.key is None or not results or evt.index >= len(results):
            return gr.skip(), gr.skip()
        return results[evt.index], (self.studio.image(state.key), Image.open(results[evt.index]))

    def cancel(self, request: gr.Request):
        if self.studio.cancel(request.session_hash):
            gr.Info("Stopping after the current step...")

    def load(self):
        """-> status, erased choices, pull (shown only while Ollama runs without a model it needs)."""
        from pipelines.diffusion.erasure import list_erased
        from pipelines.prompting import OllamaUnavailable

        erased = ["none"] + list_erased(self.settings.erased_dir)
        try:
            missing = self.studio.client().missing_models((self.settings.vision_model, self.settings.text_model))
        except OllamaUnavailable:  # not running: the status line says how to start it
            missing = []
        return self._status(), gr.Dropdown(choices=erased), gr.Button(visible=bool(missing))

    def pull(self, progress=gr.Progress()):
        """-> status, after pulling the Ollama models that are missing."""
        try:
            pulled = self.studio.pull_missing(lambda model, done, total: progress(
                (done, total) if total else None, desc=f"Pulling {model}"))
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(f"Pulled {', '.join(pulled)}." if pulled else "Both models are already there.")
        return self._status()

    def _status(self) -> str:
        return "\n".join(f"- {line}" for line in self.studio.status_lines())


# --- wiring --------------------------------------------------------------------------------------

# The page's own events need its session state: programs neither see them in the API nor may call
# them with a client. What programs call is `register_api`'s.
PAGE_ONLY = "private"


def wire(page: Page, on: Handlers) -> None:
    """Connect events to handlers. Clicks share SAM ("sam"); one diffusion at a time ("gpu")."""
    p = page
    with p.demo:
        p.photo.upload(on.upload, [p.photo], [p.state, p.photo, p.candidate, p.mood, p.notices, p.mask_upload],
                       concurrency_limit=None, api_visibility=PAGE_ONLY).then(
            on.mood, [p.state, p.mood], [p.mood, p.notices], concurrency_limit=None, api_visibility=PAGE_ONLY)
        with p.examples:
            # Photos that ship with the project (examples/README.md: licences), each with its mask,
            # so the first try needs no model: pick one, press Generate.
            examples = gr.Examples(
                [[str(EXAMPLES / f"{name}.jpg"), str(EXAMPLES / f"{name}-mask.png"), background, keyword]
                 for name, _, background, keyword in EXAMPLE_PHOTOS],
                inputs=[p.photo, p.mask_upload, p.background, p.keyword],
                example_labels=[label for _, label, *_ in EXAMPLE_PHOTOS], label="Try an example (photo and mask)",
                api_visibility=PAGE_ONLY)
        examples.load_input_event.then(
            on.example, [p.photo, p.mask_upload, p.mask_invert, p.grow],
            [p.state, p.photo, p.candidate, p.mood, p.notices], api_visibility=PAGE_ONLY)
        p.photo.clear(lambda: (PageState(), _candidates(PageState())), None, [p.state, p.candidate],
                      api_visibility=PAGE_ONLY)
        p.photo.select(on.click, [p.state, p.click_label, p.candidate, p.grow],
                       [p.state, p.photo, p.candidate, p.notices], concurrency_id="sam", concurrency_limit=2,
                       api_visibility=PAGE_ONLY)
        p.undo.click(on.undo, [p.state, p.grow], [p.state, p.photo, p.candidate], concurrency_id="sam",
                     api_visibility=PAGE_ONLY)
        p.clear.click(on.clear, [p.state, p.grow], [p.state, p.photo, p.candidate], api_visibility=PAGE_ONLY)
        p.find_subject.click(on.find_subject, [p.state, p.grow], [p.state, p.photo, p.candidate, p.notices],
                             concurrency_id="sam", api_visibility=PAGE_ONLY)
        # `input`, not `change`: a click, undo or mask upload already returns the preview with its
        # candidate, and a second preview of the same pixels rewrites the same cached file while the
        # browser is still reading it.
        p.candidate.input(on.refine, [p.state, p.candidate, p.grow], [p.photo], api_visibility=PAGE_ONLY)
        p.grow.release(on.refine, [p.state, p.candidate, p.grow], [p.photo], api_visibility=PAGE_ONLY)
        brushed = [p.state, p.candidate, p.grow]
        p.stroke.change(on.stroke, [p.state, p.stroke, p.candidate, p.grow], [p.state, p.photo],
                        api_visibility=PAGE_ONLY)
        p.undo_stroke.click(on.undo_stroke, brushed, [p.state, p.photo], api_visibility=PAGE_ONLY)
        p.clear_strokes.click(on.clear_strokes, brushed, [p.state, p.photo], api_visibility=PAGE_ONLY)
        masked = ([p.state, p.mask_upload, p.mask_invert, p.grow], [p.state, p.photo, p.candidate])
        p.mask_upload.upload(on.use_mask, *masked, api_visibility=PAGE_ONLY)
        p.mask_upload.clear(on.use_mask, *masked, api_visibility=PAGE_ONLY)
        p.mask_invert.input(on.use_mask, *masked, api_visibility=PAGE_ONLY)
        p.mask_download.click(on.mask_file, [p.state, p.candidate, p.grow, p.edit], [p.mask_file],
                              api_visibility=PAGE_ONLY)
        p.write.click(on.write_prompt, [p.keyword, p.mood], [p.prompt, p.notices], concurrency_limit=4,
                      api_visibility=PAGE_ONLY)
        # Instant side effects: no progress of their own (Generate's edit sets the prompt, too).
        p.prompt.change(on.tokens, [p.prompt], [p.tokens], queue=False, api_visibility=PAGE_ONLY,
                        show_progress="hidden")
        p.safety.change(safety_markdown, [p.safety], [p.safety_info], queue=False, api_visibility=PAGE_ONLY,
                        show_progress="hidden")
        p.safety.change(on.guidance, [p.safety, p.guidance], [p.guidance], queue=False, api_visibility=PAGE_ONLY,
                        show_progress="hidden")

        form = p.form()

        def on_generate(values: dict, request: gr.Request, progress=gr.Progress()):
            # Gradio passes a set of inputs as one dict keyed by widget; the form is built by name.
            typed = GenerateForm(**{name: values[widget] for name, widget in form.items()})
            return on.generate(values[p.state], typed, request.session_hash, progress)

        p.generate.click(on_generate, {p.state, *form.values()},
                         [p.gallery, p.before_after, p.files, p.prompt, p.seed, p.notices, p.mood, p.results,
                          p.prompt_2, p.best],
                         concurrency_id="gpu", concurrency_limit=1, api_visibility=PAGE_ONLY,
                         # One progress bar for the edit, over the result, naming stage and step
                         # (by default each of the nine outputs showed its own).
                         show_progress_on=[p.best])
        p.cancel.click(on.cancel, None, None, queue=False, api_visibility=PAGE_ONLY)
        p.gallery.select(on.select_result, [p.state, p.results], [p.best, p.before_after], api_visibility=PAGE_ONLY)
        p.demo.load(None, None, None, js=SHUT_SECTIONS_JS, api_visibility=PAGE_ONLY)
        p.demo.load(on.load, None, [p.status, p.erased, p.pull], api_visibility=PAGE_ONLY, show_progress="hidden")
        p.pull.click(on.pull, None, [p.status], concurrency_limit=1, api_visibility=PAGE_ONLY)


def build_demo(settings: Settings, studio=None) -> gr.Blocks:
    """Build the page and the API. `studio` defaults to a `Workbench` over `settings` (tests may pass their own)."""
    from pipelines.entry.workbench import Workbench

    studio = studio or Workbench(settings)
    page = build_layout(settings)
    publish = page.files.move_resource_to_block_cache
    wire(page, Handlers(settings, studio, publish=publish))
    app_api.register_api(page.demo, studio, publish)
    return page.demo


class OurFlags:
    """The console while the page runs: Gradio's hints name its `launch()` arguments, which a person
    running `python app.py` cannot set; they get our flag instead. Everything else passes unchanged."""

    HINTS = {"set `share=True` in `launch()`": "start Backdrop with --share"}

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        for theirs, ours in self.HINTS.items():
            text = text.replace(theirs, ours)
        return self.stream.write(text)

    def __getattr__(self, name: str):  # flush, isatty, encoding, ...: the real stream's
        return getattr(self.stream, name)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """`python app.py`, and `backdrop page` (`prog` names it in the help)."""
    parser = argparse.ArgumentParser(prog=prog, description="Backdrop: change a photo's background in the browser.")
    parser.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0)")
    parser.add_argument("--share", action="store_true", help="also make a public Gradio link")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (the page and the API)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve /edit, /mask and /prompt as MCP tools at /gradio_api/mcp/ "
                             "(needs gradio[mcp]: pip install -r requirements-mcp.txt)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        from pipelines.composite import output_check

        settings = Settings.from_env(overrides=vars(args))
        # Said now, not at the first Generate: a deployment that needs nudenet and lacks it.
        if output_check.checker_mode(settings) == "unavailable":
            print(f"note: outputs are not checked for nudity: {output_check.INSTALL_HINT}", file=sys.stderr)
        auth = None
        if args.auth:
            user, sep, password = args.auth.partition(":")
            if not sep or not user or not password:
                raise ValueError("--auth must be USER:PASS")
            auth = (user, password)
        if args.mcp and importlib.util.find_spec("mcp") is None:
            raise ValueError("--mcp needs the MCP extra: pip install -r requirements-mcp.txt")
        if args.mcp and auth:
            # Gradio 6's MCP server does not ask for the login: it lists the tools to anyone, and its
            # calls are refused. Serve MCP on a trusted network only, or use the API with auth.
            raise ValueError("--mcp cannot be combined with --auth (Gradio's MCP server has no login)")
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    from pipelines import libraries

    libraries.start_in_background()  # torch, diffusers, ... imported once, before the first click needs them
    demo = build_demo(settings)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=4)
    # No allowed_paths: the output folder is never served; each result reaches its own session
    # through Gradio's cache (see Handlers.generate).
    with contextlib.redirect_stdout(OurFlags(sys.stdout)):
        demo.launch(server_name="0.0.0.0" if args.listen else settings.host, server_port=settings.port,
                    share=args.share, auth=auth, max_file_size=f"{settings.max_upload_mb}mb", show_error=True,
                    js=BRUSH_JS.read_text(encoding="utf-8"), css=CSS, mcp_server=args.mcp)


if __name__ == "__main__":
    main()
