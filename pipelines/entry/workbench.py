"""What the page needs besides the stages, without any Gradio: work started early, per photo.

The page should feel immediate. As soon as a photo is uploaded, `Workbench.add_photo` starts its SAM
image embedding and its LLaVA mood in background threads, while the person is still clicking and
typing. A click then only waits for that photo's embedding (usually done by then), and Generate
reuses the mood instead of asking LLaVA again. Results are kept per photo (keyed by content hash,
bounded), so two people editing two photos never see each other's work.

SAM comes from `sam_models.get_predictor`, the one cache of it, asked once per photo: after a failed
load or download (offline, say), the next photo tries again and its clicks say why GrabCut is used.

Cancel flags are kept per browser session; the diffusion loop polls them every step.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from pipelines import downloads, editing, images, libraries, prompting
from pipelines.masks import masking, sam_models, subject
from pipelines.settings import Settings
from pipelines.types import ClickPoint, EditRequest, EditResult

MAX_PHOTOS = 8  # photos whose background work is remembered (each holds its full-size pixels)


@dataclass
class PhotoJobs:
    image: Image.Image
    embedding: Future  # -> (predictor or None, notices), once SAM's embedding is cached
    mood: Future  # -> prompting.MoodResult


class Workbench:
    """Background work per photo, shared models, cancel flags and status lines for the page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="backdrop-bg")
        self._lock = threading.Lock()
        self._photos: OrderedDict[str, PhotoJobs] = OrderedDict()
        self._cancel: dict[str, threading.Event] = {}

    # --- models ------------------------------------------------------------------------------
    def predictor(self) -> tuple[masking.MaskPredictor | None, list[str]]:
        """The shared SAM predictor from `sam_models`' one cache (None with a notice: GrabCut)."""
        libraries.ensure_imported()  # this runs in the upload's background thread: see libraries.py
        return sam_models.get_predictor(self.settings)

    def subject_model(self, download: bool = True, on_progress=None) -> tuple[subject.SubjectModel | None, list[str]]:
        """The shared subject model (`subject.get_subject_model`; None with a notice naming the download).
        `download=False`: only a model already on disk (a click does not wait for a download);
        `on_progress(bytes_done, bytes_total)` while it downloads."""
        libraries.ensure_imported()  # rembg (onnxruntime, pymatting) is imported beside the page's other threads
        return subject.get_subject_model(self.settings, on_progress=on_progress, download=download)

    def find_subject(self, key: str, on_progress=None):
        """The photo's subject without clicks: (H, W) bool. Raises ValueError without a model or subject.
        The first call may download the model: `on_progress(bytes_done, bytes_total)` says how far."""
        model, notices = self.subject_model(on_progress=on_progress)
        if model is None:
            raise ValueError(notices[0])
        return subject.find_subject(self._jobs(key).image, model)

    def tokenizers(self):
        """SDXL's tokenizers, from the local copy (only they are fetched when nothing is cached)."""
        libraries.ensure_imported()
        return prompting.sdxl_tokenizers(self.settings)

    def client(self):
        return prompting.make_client(self.settings.ollama_host, self.settings.ollama_timeout)

    # --- per photo ---------------------------------------------------------------------------
    def add_photo(self, image: Image.Image) -> str:
        """Remember a photo and start its SAM embedding and LLaVA mood. Returns its key."""
        key = images.image_hash(image)
        with self._lock:
            if key in self._photos:
                self._photos.move_to_end(key)
                return key
            jobs = PhotoJobs(image=image, embedding=self._pool.submit(self._embed, image),
                             mood=self._pool.submit(self._mood, image))
            self._photos[key] = jobs
            while len(self._photos) > MAX_PHOTOS:
                self._photos.popitem(last=False)
        return key

    def _embed(self, image: Image.Image) -> tuple[masking.MaskPredictor | None, list[str]]:
        predictor, notices = self.predictor()  # a failure is tried again with the next photo
        if predictor is not None:
            predictor.embed(image)
        return predictor, notices

    def _mood(self, image: Image.Image) -> prompting.MoodResult:
        s = self.settings
        return prompting.describe_mood(image, self.client(), s.vision_model, temperature=s.llm_temperature,
                                       keep_alive=s.ollama_keep_alive)

    def _jobs(self, key: str) -> PhotoJobs:
        with self._lock:
            jobs = self._photos.get(key)
        if jobs is None:
            raise ValueError("this photo is no longer loaded: upload it again")
        return jobs

    def image(self, key: str) -> Image.Image:
        return self._jobs(key).image

    def mood(self, key: str) -> prompting.MoodResult:
        """The photo's mood, waiting for LLaVA at most the Ollama time-out (plus a margin)."""
        future = self._jobs(key).mood
        try:
            return future.result(timeout=self.settings.ollama_timeout + 5)
        except TimeoutError:
            return prompting.MoodResult(mood="", keywords=[], source="unavailable",
                                        notices=["LLaVA did not answer in time; type a mood or leave it empty"])

    def predict(self, key: str, points: list[ClickPoint], mask_input=None) -> masking.MaskPrediction:
        """SAM's three masks for the clicks (GrabCut without SAM). Waits for the photo's embedding."""
        jobs = self._jobs(key)
        predictor, notices = jobs.embedding.result()  # re-raises an embedding failure here, once per click
        model = self.subject_model(download=False)[0] if predictor is None else None  # the fallback's helper
        prediction = masking.predict_masks(jobs.image, points, predictor, mask_input=mask_input, subject_model=model)
        prediction.notices = notices + [n for n in prediction.notices if n not in notices]
        return prediction

    # --- prompt ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return prompting.count_tokens(text, self.tokenizers()) if text.strip() else 0

    def write_prompt(self, keyword: str, mood: str, seed: int | None = None) -> prompting.PromptResult:
        s = self.settings
        return prompting.write_prompt(keyword, mood, self.client(), self.tokenizers(), s.text_model,
                                      temperature=s.llm_temperature, seed=seed,
                                      keep_alive=s.ollama_keep_alive)

    # --- editing -----------------------------------------------------------------------------
    def edit(self, request: EditRequest, session: str, on_progress=None) -> EditResult:
        """Run an edit for a browser session; `cancel(session)` stops it at the next step.

        With `settings.ray_address` the edit runs on a worker of that Ray cluster (progress: one
        "remote" stage), else here."""
        libraries.ensure_imported()  # the page and the API call this beside the upload's threads
        event = threading.Event()
        with self._lock:
            self._cancel[session] = event
        try:
            if self.settings.ray_address:
                # The page keeps its clicks, mood and prompt; a worker of the cluster paints, from
                # the request's chosen subject (it needs no SAM).
                from pipelines.entry import cluster

                return cluster.run_edit_remote(request, self.settings, on_progress=on_progress,
                                               should_cancel=event.is_set)
            return editing.run_edit(request, self.settings, on_progress=on_progress, should_cancel=event.is_set)
        finally:
            with self._lock:
                if self._cancel.get(session) is event:
                    del self._cancel[session]

    def cancel(self, session: str) -> bool:
        """Ask the session's running edit to stop; False when nothing is running."""
        with self._lock:
            event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def pull_missing(self, on_progress=None) -> list[str]:
        """Pull the vision and text models if Ollama lacks them; returns the names pulled."""
        client = self.client()
        try:
            missing = client.missing_models((self.settings.vision_model, self.settings.text_model))
        except prompting.OllamaUnavailable as exc:
            raise RuntimeError(str(exc)) from exc
        for model in missing:
            client.pull(model, (lambda status, done, total, m=model: on_progress(m, done, total))
                        if on_progress else None)
        return missing

    # --- status ------------------------------------------------------------------------------
    def status_lines(self) -> list[str]:
        """One line per component (SAM, Ollama, SDXL), each saying what to do when it is missing."""
        libraries.ensure_imported()  # the page's first status line would import diffusers beside the upload's work
        from pipelines.diffusion.sdxl_models import sdxl_status

        s = self.settings
        missing = downloads.sdxl_missing(s)
        return [sam_models.sam_status(s),
                prompting.ollama_status(self.client(), (s.vision_model, s.text_model)),
                sdxl_status(s) + (f"; {missing}" if missing else "")]
