"""Backdrop's page: Gradio widgets and their wiring, nothing else.

    python app.py                       # http://127.0.0.1:7860
    python app.py --listen --port 8080 --auth me:secret

Three files, each read alone: `app_layout.py` places the widgets and returns them as a `Page`;
`app_handlers.py` turns widget values into calls on `pipelines.entry.workbench.Workbench` and
`pipelines.entry.page`, and results back into widget values; this file connects events to handlers
(`wire`), builds the page with its API and starts it (`main`). Only these and `app_api.py` know
about Gradio.

The endpoints for programs (`/edit`, `/mask`, `/prompt`) are `app_api.py`'s; the brush's script is
`app_brush.js`.

Results are handed to the session that made them only: each saved PNG is copied into Gradio's
cache under a name derived from its content (unguessable) and that URL goes to the session; the
output folder itself is never served.
"""

# No `from __future__ import annotations` here: Gradio reads annotations at run time.
import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path

import gradio as gr

import app_api
from app_handlers import Handlers, candidate_radio
from app_layout import CSS, SHUT_SECTIONS_JS, Page, build_layout
from pipelines.entry.page import GenerateForm, PageState, safety_markdown
from pipelines.settings import Settings, add_arguments


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
        p.photo.clear(lambda: (PageState(), candidate_radio(PageState())), None, [p.state, p.candidate],
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
