"""Backdrop for programs: `/edit`, `/mask` and `/prompt` as Gradio API endpoints (and MCP tools).

    from gradio_client import Client, handle_file
    images, record = Client("http://127.0.0.1:7860").predict(
        photo=handle_file("photo.jpg"), points="512,380", keyword="forest", api_name="/edit")

`register_api` adds them to the page's Blocks (`app.build_demo`), so they share its queue and locks.
The work behind each, without Gradio, is `pipelines.api`; this file only turns Gradio's file values
into paths and back, and errors into one-line `gr.Error`s. Their docstrings are the API docs.
"""

# No `from __future__ import annotations`: Gradio reads the endpoints' annotations at run time.
from collections.abc import Callable

import gradio as gr
from gradio import processing_utils

from pipelines.errors import one_line


def _file(data: dict | None) -> str | None:
    """The server-side path of an uploaded file (Gradio hands `gr.api` functions FileData dicts)."""
    return None if data is None else gr.FileData(**data).path


def _served(path: str) -> dict:
    """A file in Gradio's cache as the FileData a client downloads."""
    return gr.FileData(path=path).model_dump()


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
    from pipelines import api

    def edit(photo: gr.FileData, points: str = "", mask: gr.FileData | None = None, keyword: str = "",
             mood: str = "", prompt: str = "", negative_prompt: str = "", safety: str = "", erased: str = "",
             steps: int = 30, guidance: float = 7.5, strength: float = 1.0, seed: int | None = None,
             candidates: int = 1, edge: str = "matte", grow: int = 0, feather: int = 4,
             edit_subject: bool = False, background: str = "generate", background_picture: gr.FileData | None = None,
             canvas: str = "", place: str = "center", fast: str = "", subject: str = "",
             request: gr.Request = None) -> tuple[list[gr.FileData], dict]:
        """Change a photo's background (or its subject) and keep the rest pixel-exact.
        Say where the subject is with points on it, with a mask, or with subject="auto".

        Args:
            photo: the photo (PNG, JPEG, WebP, ...).
            points: clicks in photo pixels, "X,Y[,L];X,Y[,L]", L 1 = subject (default), 0 = not; e.g. "320,240;9,9,0".
            mask: instead of points, a mask image of the photo's size: white = repaint, black = keep exactly.
            keyword: what the new background should be, any language, e.g. "forest" or "비 오는 밤거리".
            mood: mood keywords for the prompt, e.g. "calm, warm"; empty = LLaVA reads them from the photo.
            prompt: the exact SDXL prompt; empty = Llama 2 writes it from keyword and mood.
            negative_prompt: what to avoid; empty = Backdrop's default negative prompt.
            safety: Safe Latent Diffusion: off, weak, medium, strong or max; empty = the lowest this server allows.
            erased: name of concept-erased text encoders to use; empty = none.
            steps: diffusion steps, 1 to 200.
            guidance: classifier-free guidance scale, 0 to 50 (at least 1 with safety on).
            strength: 1.0 repaints from pure noise; lower keeps more of the old background's layout.
            seed: random seed of the first image (the others use seed+1, ...); empty = random.
            candidates: how many images to make, 1 to 8; they come back best-scoring first.
            edge: how the kept part meets the new background: matte (alpha matting, default), feather or hard.
            grow: grow (>0) or shrink (<0) the subject by this many pixels.
            feather: soft seam width in pixels.
            edit_subject: repaint the subject instead of the background.
            background: generate (SDXL, default), transparent, a colour ("white", "#1e90ff") or blur / blur:RADIUS; no model is loaded for the plain ones.
            background_picture: a picture file to use as the background instead (scaled to cover the frame).
            canvas: a larger frame, "WxH" or a ratio "16:9" (the smallest of that shape holding the photo); empty = the photo's own size.
            place: where the photo sits on the canvas: center, left, right, top or bottom.
            fast: a few-step preset, e.g. "lightning-4step"; empty = the standard steps.
            subject: "auto" = no points or mask: the subject model finds the subject; empty = points or mask say where.

        Returns:
            the edited images as PNG files, best first
            the record `python -m pipelines edit --json` prints: outputs, seeds, scores, edge, prompt,
            prompt_tokens, prompt_2, prompt_2_tokens, mood, notices, timings, safety
        """
        from pipelines.errors import Cancelled

        try:
            result, record = api.edit(
                studio, _file(photo), points=points, mask=_file(mask), keyword=keyword, mood=mood, prompt=prompt,
                negative_prompt=negative_prompt, safety=safety, erased=erased, steps=steps, guidance=guidance,
                strength=strength, seed=seed, candidates=candidates, edge=edge, grow=grow, feather=feather,
                edit_subject=edit_subject, session=request.session_hash if request else "api",
                background=background, background_picture=_file(background_picture), canvas=canvas, place=place,
                fast=fast, subject=subject)
        except Cancelled as exc:
            raise gr.Error("cancelled") from exc
        except API_FAILURES as exc:
            raise gr.Error(one_line(exc)) from exc
        return [_served(publish(str(path))) for path in result.paths], record

    def mask(photo: gr.FileData, points: str = "", candidate: int = 0, grow: int = 0,
             subject: str = "") -> tuple[gr.FileData, dict]:
        """The mask that clicks on a photo make (Segment Anything), as a PNG that /edit's mask accepts.

        Args:
            photo: the photo (PNG, JPEG, WebP, ...).
            points: clicks in photo pixels, "X,Y[,L];X,Y[,L]", L 1 = subject (default), 0 = not; e.g. "320,240;9,9,0".
            candidate: which of SAM's three masks, 0 = the best-scoring.
            subject: "auto" = no points: the subject model finds the subject; empty = the points say where.
            grow: grow (>0) or shrink (<0) the subject by this many pixels.

        Returns:
            the mask PNG at the photo's size: white = repaint (the background), black = kept (the subject)
            scores (SAM's predicted quality of its three masks, best first), method (sam, subject or grabcut),
            candidate, notices
        """
        try:
            image, record = api.mask(studio, _file(photo), points=points, candidate=candidate, grow=grow,
                                     subject=subject)
        except API_FAILURES as exc:
            raise gr.Error(one_line(exc)) from exc
        return _served(processing_utils.save_pil_to_cache(image, demo.GRADIO_CACHE, "mask", format="png")), record

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
