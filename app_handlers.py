"""What each event of the page does: widget values in, calls on the `Workbench` (background work
per photo) and `pipelines.entry.page` (typed session state, the Generate form, previews), widget
values out. The only place besides `app_api.py` that turns errors into one-line `gr.Error`s.

Models never live in session state: the state holds the photo's key, the clicks and the current SAM
prediction.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations
# (gr.SelectData, gr.Request, gr.Progress) at run time to know what to pass them.
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from pipelines.entry.page import (GenerateForm, PageState, Stroke, candidate_choices, captions, found_prediction,
                                  guidance_limits, mask_png, notices_markdown, preview, repaint_mask, uploaded_subject)
from pipelines.errors import one_line
from pipelines.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.entry.workbench import Workbench

STAGES = {"mask": "Masking", "mood": "Reading the mood (LLaVA)", "prompt": "Writing the prompt (Llama 2)",
          "download": "Downloading SDXL", "load": "Loading SDXL", "diffusion": "Generating", "save": "Saving",
          "remote": "Running on the cluster"}


def candidate_radio(state: PageState) -> gr.Radio:
    choices = candidate_choices(state.prediction)
    return gr.Radio(choices=choices, value=0 if choices else None)


class Handlers:
    """What each event does, on typed values; the only place that raises `gr.Error`."""

    def __init__(self, settings: Settings, studio: "Workbench", publish: Callable[[str], str]):
        """`publish(path)` hands a saved file to the session and returns the path it is served from."""
        self.settings, self.studio, self.publish = settings, studio, publish

    def upload(self, path: str | None):
        """-> state, photo, candidate, mood, notices, mask_upload (a new photo drops the old mask and
        strokes). Starts SAM's embedding and LLaVA's mood."""
        from pipelines.images import load_image

        if path is None:
            return PageState(), None, candidate_radio(PageState()), "", "", None
        try:
            image = load_image(path, self.settings.max_image_pixels)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        state = PageState.for_photo(self.studio.add_photo(image), image)
        return state, state.display, candidate_radio(state), "", "Click the subject.", None

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
        return (state, preview(state, image.width, 0, grow), candidate_radio(state),
                notices_markdown(prediction.notices))

    def undo(self, state: PageState, grow: int):
        """-> state, photo, candidate without the last click."""
        if state.key is None:
            return gr.skip(), gr.skip(), gr.skip()
        points = state.points[:-1]
        positive = any(p.label == 1 for p in points)
        state = state.with_prediction(points, self.studio.predict(state.key, list(points)) if positive else None)
        return state, preview(state, self.studio.image(state.key).width, 0, grow), candidate_radio(state)

    def clear(self, state: PageState, grow: int):
        """-> state, photo, candidate with no clicks (an uploaded mask shows again)."""
        if state.key is None:
            return gr.skip(), gr.skip(), gr.skip()
        state = state.with_prediction((), None)
        return state, self._preview(state, 0, grow), candidate_radio(state)

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
        return (state, preview(state, self.studio.image(state.key).width, 0, grow), candidate_radio(state),
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
        return state, self._preview(state, 0, grow), candidate_radio(state)

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
