"""Backdrop for programs: `/edit`, `/mask` and `/prompt` as Gradio API endpoints (and MCP tools).

    from gradio_client import Client, handle_file
    images, record = Client("http://127.0.0.1:7860").predict(
        photo=handle_file("photo.jpg"), points="512,380", keyword="forest", api_name="/edit")

`register_api` adds them to the page's Blocks (`app.build_demo`), so they share its queue and locks.
The work behind each, without Gradio, is `pipelines.entry.api`; this file only turns Gradio's file values
into paths and back, and errors into one-line `gr.Error`s. Their docstrings are the API docs.
"""

# No `from __future__ import annotations`: Gradio reads the endpoints' annotations at run time.
import inspect
from collections.abc import Callable

import gradio as gr
from gradio import processing_utils

from pipelines.errors import one_line
from pipelines.types import EditRequest, edit_option, edit_options


def _file(data: dict | None) -> str | None:
    """The server-side path of an uploaded file (Gradio hands `gr.api` functions FileData dicts)."""
    return None if data is None else gr.FileData(**data).path


def _served(path: str) -> dict:
    """A file in Gradio's cache as the FileData a client downloads."""
    return gr.FileData(path=path).model_dump()


PHOTO_DOC = "the photo (PNG, JPEG, WebP, ...)."
POINTS_DOC = ('clicks in photo pixels, "X,Y[,L];X,Y[,L]", L 1 = subject (default), 0 = not; '
              'e.g. "320,240;9,9,0".')
# /edit's inputs besides the options: where the subject is, and files (Gradio hands them as FileData).
_EDIT_INPUTS = (
    ("photo", gr.FileData, inspect.Parameter.empty, PHOTO_DOC),
    ("points", str, "", POINTS_DOC),
    ("mask", gr.FileData | None, None, "instead of points, a mask image of the photo's size: white = repaint, "
                                       "black = keep exactly."),
    ("subject", str, "", '"auto" = no points or mask: the subject model finds the subject; empty = points or mask '
                         'say where.'),
)
_PICTURE = ("background_picture", gr.FileData | None, None,
            "a picture file to use as the background instead (scaled to cover the frame).")


def _edit_parameters(request_type: type = EditRequest) -> list[tuple[str, object, object, str]]:
    """(name, annotation, default, one-line doc) of /edit's parameters: the inputs, then every option
    of `EditRequest` (`types.edit_options`), the picture upload after `background`."""
    from pipelines.entry.api import option_default

    parameters = list(_EDIT_INPUTS)
    for option in edit_options(request_type):
        annotation = option.kind | None if option.kind is not str and option_default(option) is None else option.kind
        parameters.append((option.name, annotation, option_default(option), option.describe()))
        if option.field == "background":
            parameters.append(_PICTURE)
    return parameters


def edit_signature(request_type: type = EditRequest) -> inspect.Signature:
    """/edit's signature, as Gradio reads it (names, annotations, defaults), from the request's options."""
    return inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        for name, annotation, default, _ in _edit_parameters(request_type)])


def edit_doc(request_type: type = EditRequest) -> str:
    """/edit's docstring: the API docs and the MCP tool's description. Gradio reads one line per
    parameter (`gradio.utils.get_function_description`)."""
    return "\n".join([
        "Change a photo's background (or its subject) and keep the rest pixel-exact.",
        'Say where the subject is with points on it, with a mask, or with subject="auto".',
        "",
        "Args:",
        *(f"    {name}: {doc}" for name, _, _, doc in _edit_parameters(request_type)),
        "",
        "Returns:",
        "    the edited images as PNG files, best first",
        "    the record `python -m pipelines edit --json` prints: outputs, seeds, scores, edge, prompt,",
        "    prompt_tokens, prompt_2, prompt_2_tokens, mood, notices, timings, safety",
    ])

MASK_DOC = "\n".join([
    "The mask that clicks on a photo make (Segment Anything), as a PNG that /edit's mask accepts.",
    "",
    "Args:",
    f"    photo: {PHOTO_DOC}",
    f"    points: {POINTS_DOC}",
    f"    candidate: {edit_option('mask_candidate').describe().replace('empty = the best-scoring', 'default 0')}",
    f"    grow: {edit_option('grow').describe()}",
    '    subject: "auto" = no points: the subject model finds the subject; empty = the points say where.',
    "",
    "Returns:",
    "    the mask PNG at the photo's size: white = repaint (the background), black = kept (the subject)",
    "    scores (SAM's predicted quality of its three masks, best first), method (sam, subject or grabcut),",
    "    candidate, notices",
])

# What a client sees as a one-line error, like the page's and the command line's: bad input
# (ValueError), or a stage that could not run (GpuOutOfMemory is a RuntimeError).
API_FAILURES = (ValueError, RuntimeError, OSError)


def register_api(demo: gr.Blocks, studio, publish: Callable[[str], str]) -> None:
    """Serve `/edit`, `/mask` and `/prompt` to programs (gradio_client, curl) and, with `--mcp`, as
    MCP tools. Their docstrings are the API docs and the tool descriptions; Gradio reads one line
    per parameter (`gradio.utils.get_function_description`), so each stays on one line.

    `/edit` shares the page's queue and GPU lock ("gpu"), `/mask` the clicks' ("sam"). Results
    reach the caller through Gradio's cache (`publish`), never from the output folder.
    """
    from pipelines.entry import api

    def edit(*args, **kwargs) -> tuple[list[gr.FileData], dict]:
        # The signature and docs Gradio reads are made from EditRequest's options (edit_signature).
        from pipelines.errors import Cancelled

        values = edit.__signature__.bind(*args, **kwargs).arguments
        request = values.pop("request", None)
        files = {name: _file(values.pop(name, None)) for name in ("photo", "mask", "background_picture")}
        try:
            result, record = api.edit(
                studio, files["photo"], points=values.pop("points", ""), mask=files["mask"],
                background_picture=files["background_picture"], session=request.session_hash if request else "api",
                **values)
        except Cancelled as exc:
            raise gr.Error("cancelled") from exc
        except API_FAILURES as exc:
            raise gr.Error(one_line(exc)) from exc
        return [_served(publish(str(path))) for path in result.paths], record

    signature = edit_signature()
    edit.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(),
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)],
        return_annotation=tuple[list[gr.FileData], dict])  # Gradio counts the outputs from it
    edit.__annotations__ = {**{p.name: p.annotation for p in edit.__signature__.parameters.values()},
                            "return": edit.__signature__.return_annotation}
    edit.__doc__ = edit_doc()

    def mask(photo: gr.FileData, points: str = "", candidate: int = 0,
             grow: int = edit_option("grow").default, subject: str = "") -> tuple[gr.FileData, dict]:
        # The docs Gradio reads: MASK_DOC, with the candidate's and grow's lines from EditRequest's options.
        try:
            image, record = api.mask(studio, _file(photo), points=points, candidate=candidate, grow=grow,
                                     subject=subject)
        except API_FAILURES as exc:
            raise gr.Error(one_line(exc)) from exc
        return _served(processing_utils.save_pil_to_cache(image, demo.GRADIO_CACHE, "mask", format="png")), record

    mask.__doc__ = MASK_DOC

    def prompt(keyword: str = "", mood: str = "", photo: gr.FileData | None = None) -> dict:
        """Write the SDXL prompt for a new background from a keyword and a mood (or the mood LLaVA
        reads from a photo), cut to SDXL's 77 CLIP tokens.

        Args:
            keyword: what the new background should be, any language, e.g. "forest".
            mood: mood keywords, e.g. "calm, warm"; empty = read from the photo if one is given.
            photo: a photo whose mood to use when no mood is given.

        Returns:
            prompt (what SDXL would receive), prompt_tokens (its CLIP token count, at most 77), mood,
            source (llm, or template when Ollama failed), notices
        """
        try:
            return api.prompt(studio, keyword=keyword, mood=mood, photo=_file(photo))
        except API_FAILURES as exc:
            raise gr.Error(one_line(exc)) from exc

    with demo:
        gr.api(edit, api_name="edit", concurrency_id="gpu", concurrency_limit=1)
        gr.api(mask, api_name="mask", concurrency_id="sam", concurrency_limit=2)
        gr.api(prompt, api_name="prompt", concurrency_limit=4)
