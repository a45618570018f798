"""The page's layout: where each widget stands, returned as a `Page`; no event is wired here.

The first view holds what an edit needs; everything else is in named sections under Generate,
built open and shut by the page's load event (`SECTION_CLASS`). `app.py` wires the events
(`app_handlers.py` says what each does).
"""

# No `from __future__ import annotations`: Gradio reads annotations at run time (see app_handlers.py).
from dataclasses import dataclass, fields

import gradio as gr

from pipelines.entry.page import BACKGROUNDS, BRUSHES, CANVASES, GenerateForm, PageState, safety_markdown
from pipelines.entry.page import choices as option_choices
from pipelines.entry.page import slider as option_slider
from pipelines.settings import SAFETY_LEVELS, Settings
from pipelines.types import edit_option

MASK_HELP = ("A black-and-white image the photo's size. **White = repaint, black = keep**, as `--mask` and "
             "inpainting tools read it (grey counts from 50 %). Masks where white is the *subject* (cutouts, "
             "SAM, rembg): tick **Invert**. A click starts over from SAM; *Clear points* brings the mask back.")


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
    (Set on the instance: a subclass would make Gradio write an `app_layout.pyi` stub beside this file.)
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
