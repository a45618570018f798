"""Backdrop's page: Gradio widgets and their wiring, nothing else.

    python app.py                       # http://127.0.0.1:7860
    python app.py --listen --port 8080 --auth me:secret

Every widget value becomes plain Python here and goes to `pipelines.studio.Studio` (background work
per photo) or `pipelines.editing.run_edit`; only this file knows about Gradio, and only this file
turns errors into `gr.Error`. Models never live in session state: the state holds the photo's key,
the clicks and the current SAM prediction.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations
# (gr.SelectData, gr.Request, gr.Progress) at run time to know what to pass them.
import argparse
import sys

import numpy as np
from PIL import Image

from pipelines.settings import SAFETY_LEVELS, SCHEDULERS, Settings, add_arguments

DISPLAY_SIDE = 1280  # the longest side of the clickable preview; clicks are mapped back to the photo
STAGES = {"mask": "Masking", "mood": "Reading the mood (LLaVA)", "prompt": "Writing the prompt (Llama 2)",
          "download": "Downloading SDXL", "load": "Loading SDXL", "diffusion": "Generating", "save": "Saving"}


def _hand_upload_to_our_loader(photo) -> None:
    """Make a `gr.Image` pass the uploaded file's path to Backdrop's own loader untouched.

    Gradio's `Image.preprocess` decodes and re-encodes an upload before the handler sees it, which
    drops 16-bit depth, answers a non-image with a multi-line internal error, and would decode a
    decompression bomb. `pipelines.images.load_image` does all of that right, with one-line errors.
    (Set on the instance: a subclass would make Gradio write an `app.pyi` stub beside this file.)
    """
    photo.preprocess = lambda payload: None if payload is None else payload.path


def _new_state() -> dict:
    return {"key": None, "points": [], "prediction": None, "display": None}


def build_demo(settings: Settings, studio=None):
    """Build the page. `studio` defaults to a `Studio` over `settings` (tests may pass their own)."""
    import gradio as gr

    from pipelines import masking
    from pipelines.blending import Cancelled, GpuOutOfMemory
    from pipelines.downloads import format_progress
    from pipelines.erasure import list_erased
    from pipelines.images import load_image
    from pipelines.prompting import MAX_TOKENS
    from pipelines.safety import PRESET_LABELS, get_preset
    from pipelines.studio import Studio
    from pipelines.types import ClickPoint, EditRequest

    studio = studio or Studio(settings)
    min_level = SAFETY_LEVELS.index(settings.min_safety)

    # --- helpers (plain Python) ------------------------------------------------------------------
    def render(state, candidate=0, grow=0):
        """The clickable preview: the photo at display size, the subject (after grow / shrink)
        tinted, points drawn. Whether the subject or the background is repainted, the tinted region
        is the subject; the feather only softens the seam in the result."""
        display = state["display"]
        if state["prediction"] is None:
            return display
        scale = display.width / studio.image(state["key"]).width
        subject = masking.refine_mask(state["prediction"].masks[candidate or 0], grow=int(grow)) < 0.5
        small = np.asarray(Image.fromarray(subject).resize(display.size, Image.Resampling.NEAREST))
        points = [ClickPoint(int(p.x * scale), int(p.y * scale), p.label) for p in state["points"]]
        return masking.overlay(display, small, points)

    def candidate_choices(state):
        prediction = state["prediction"]
        if prediction is None:
            return gr.update(choices=[], value=None)
        if prediction.method != "sam":  # GrabCut gives one mask, not three ranked ones
            return gr.update(choices=[("GrabCut", 0)], value=0)
        labels = [f"{i + 1} (score {s:.2f})" for i, s in enumerate(prediction.scores)]
        return gr.update(choices=list(zip(labels, range(len(labels)))), value=0)

    def notices_md(notices):
        return "\n".join(f"- {n}" for n in dict.fromkeys(notices)) if notices else ""

    def tokens_md(text):
        return f"{studio.count_tokens(text or '')} / {MAX_TOKENS} tokens"

    def safety_md(position):
        level = SAFETY_LEVELS[int(position)]
        preset = get_preset(level)
        if preset is None:
            return "**Off**: no safety guidance"
        return (f"**{PRESET_LABELS[level]}**: warm-up δ {preset.sld_warmup_steps} (of 50 steps), "
                f"s_S {preset.sld_guidance_scale:g}, λ {preset.sld_threshold:g}, "
                f"s_m {preset.sld_momentum_scale:g}, β_m {preset.sld_mom_beta:g}")

    # --- handlers --------------------------------------------------------------------------------
    def on_upload(path, state):
        if path is None:
            return _new_state(), None, candidate_choices(_new_state()), "", ""
        try:
            image = load_image(path, settings.max_image_pixels)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        state = _new_state()
        state["key"] = studio.add_photo(image)  # starts SAM's embedding and LLaVA's mood now
        display = image.copy()
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
        state["display"] = display
        return state, display, candidate_choices(state), "", "Click the subject."

    def on_mood(state, mood):
        if state["key"] is None or (mood or "").strip():
            return gr.skip(), gr.skip()
        result = studio.mood(state["key"])
        # Keep the "Click the subject." hint unless LLaVA has something to say (a fallback).
        return result.mood, notices_md(result.notices) if result.notices else gr.skip()

    def on_click(state, label, candidate, grow, evt: gr.SelectData):
        if state["key"] is None:
            raise gr.Error("upload a photo first")
        image = studio.image(state["key"])
        scale = image.width / state["display"].width
        x, y = (int(v * scale) for v in evt.index[:2])
        x, y = min(x, image.width - 1), min(y, image.height - 1)
        points = state["points"] + [ClickPoint(x, y, 1 if label == "subject" else 0)]
        previous = state["prediction"]
        # SAM's demo feeds the last low-res logits back, so each click refines the mask it sees.
        mask_input = previous.next_mask_input(candidate or 0) if previous is not None else None
        try:
            prediction = studio.predict(state["key"], points, mask_input)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        state = {**state, "points": points, "prediction": prediction}
        return state, render(state, 0, grow), candidate_choices(state), notices_md(prediction.notices)

    def on_undo(state, grow):
        points = state["points"][:-1]
        prediction = studio.predict(state["key"], points) if any(p.label == 1 for p in points) else None
        state = {**state, "points": points, "prediction": prediction}
        return state, render(state, 0, grow), candidate_choices(state)

    def on_clear(state):
        state = {**state, "points": [], "prediction": None}
        return state, state["display"], candidate_choices(state)

    def on_refine(state, candidate, grow):
        if state["prediction"] is None:
            return gr.skip()
        return render(state, candidate, grow)

    def on_write_prompt(keyword, mood):
        try:
            result = studio.write_prompt(keyword, mood)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return result.prompt, notices_md(result.notices)

    def on_generate(state, mood, keyword, prompt, safety, concept, erased, steps, guidance, strength,
                    seed, random_seed, candidates, negative, quality, scheduler, candidate, grow, feather,
                    edit, request: gr.Request, progress=gr.Progress()):
        if state["key"] is None:
            raise gr.Error("upload a photo first")
        if state["prediction"] is None:
            raise gr.Error("click the subject first")
        image = studio.image(state["key"])
        if not (mood or "").strip() and not (prompt or "").strip():
            mood = studio.mood(state["key"]).mood  # usually ready since the upload
        edit_request = EditRequest(
            image=image, points=list(state["points"]),
            subject=state["prediction"].masks[candidate or 0], grow=int(grow), feather=int(feather),
            edit_subject=(edit == "subject"), keyword=keyword or "", mood=(mood or "").strip(),
            prompt=(prompt or "").strip() or None, prompt_2=quality, negative_prompt=negative,
            safety=SAFETY_LEVELS[int(safety)], sld_concept=(concept or "").strip() or None,
            erased=None if erased in (None, "none") else erased, num_inference_steps=int(steps),
            guidance_scale=float(guidance), strength=float(strength),
            seed=None if random_seed else int(seed), num_candidates=int(candidates), scheduler=scheduler)

        def on_progress(stage, i, n, preview):
            if stage == "download":  # i of n bytes: "Downloading SDXL 2.1 / 6.9 GB"
                progress((i, n) if n else None, desc=f"{STAGES[stage]} {format_progress(i, n)}")
            elif n:
                progress((i, n), desc=f"{STAGES[stage]}: step {i}/{n}")
            else:
                progress(None, desc=STAGES[stage])

        try:
            result = studio.edit(edit_request, request.session_hash, on_progress)
        except Cancelled:
            gr.Warning("Cancelled.")
            return (gr.skip(),) * 7
        except (ValueError, GpuOutOfMemory, RuntimeError, OSError) as exc:
            raise gr.Error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        gallery = [(str(p), f"seed {s}") for p, s in zip(result.paths, result.seeds)]
        return (gallery, (image, result.images[0]), [str(p) for p in result.paths], result.prompt,
                result.seeds[0], notices_md(result.notices), result.mood or gr.skip())

    def on_select_result(state, paths, evt: gr.SelectData):
        if state["key"] is None or not paths or evt.index >= len(paths):
            return gr.skip()
        return studio.image(state["key"]), Image.open(paths[evt.index])

    def on_cancel(request: gr.Request):
        if studio.cancel(request.session_hash):
            gr.Info("Stopping after the current step...")

    def on_load():
        erased = ["none"] + list_erased(settings.erased_dir)
        return "\n".join(f"- {line}" for line in studio.status_lines()), gr.update(choices=erased)

    def on_pull(progress=gr.Progress()):
        try:
            pulled = studio.pull_missing(lambda model, done, total: progress(
                (done, total) if total else None, desc=f"Pulling {model}"))
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"Pulled {', '.join(pulled)}." if pulled else "Both models are already there.")
        return "\n".join(f"- {line}" for line in studio.status_lines())

    # --- layout ----------------------------------------------------------------------------------
    with gr.Blocks(title="Backdrop") as demo:
        state = gr.State(_new_state())
        gr.Markdown("# Backdrop\nUpload a photo, click the subject, say what the new background should be.")
        with gr.Row():
            with gr.Column(scale=3):
                photo = gr.Image(label="Photo", type="filepath", sources=["upload", "clipboard"],
                                 elem_id="photo", height=560)
                _hand_upload_to_our_loader(photo)
                with gr.Row():
                    click_label = gr.Radio(["subject", "not subject"], value="subject", label="Click marks")
                    undo = gr.Button("Undo last point", size="sm")
                    clear = gr.Button("Clear points", size="sm")
                candidate = gr.Radio([], label="Mask candidate", type="value")
                with gr.Row():
                    grow = gr.Slider(-32, 32, value=0, step=1, label="Grow / shrink")
                    feather = gr.Slider(0, 32, value=4, step=1, label="Feather")
                edit = gr.Radio(["background", "subject"], value="background", label="Edit")
            with gr.Column(scale=2):
                mood = gr.Textbox(label="Mood", placeholder="filled by LLaVA after upload; editable")
                keyword = gr.Textbox(label="Background keyword", elem_id="keyword", placeholder="forest, galaxy, 비 오는 밤거리 ...")
                write = gr.Button("Write prompt")
                prompt = gr.Textbox(label="Prompt", lines=3,
                                    placeholder="empty: written from the keyword and mood when you generate")
                tokens = gr.Markdown("0 / 77 tokens", elem_id="tokens")
                safety = gr.Slider(min_level, len(SAFETY_LEVELS) - 1, value=min_level, step=1,
                                   label="Safety", info="Off, Hyp-Weak, Hyp-Medium, Hyp-Strong, Hyp-Max",
                                   elem_id="safety")
                safety_info = gr.Markdown(safety_md(min_level), elem_id="safety-info")
                erased = gr.Dropdown(["none"], value="none", label="Erased encoder")
                with gr.Accordion("Advanced", open=False):
                    concept = gr.Textbox(label="Safety concept", placeholder="default: the SLD paper's concept list")
                    steps = gr.Slider(1, 100, value=30, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance")
                    strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1)
                        random_seed = gr.Checkbox(True, label="Random seed")
                    candidates = gr.Slider(1, 4, value=1, step=1, label="Candidates")
                    from pipelines.prompting import default_negative_prompt, quality_words

                    negative = gr.Textbox(default_negative_prompt(), label="Negative prompt", lines=2)
                    quality = gr.Textbox(quality_words(), label="Quality words", lines=2)
                    scheduler = gr.Dropdown(list(SCHEDULERS), value="euler", label="Scheduler")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel")
        notices = gr.Markdown(elem_id="notices")
        with gr.Row():
            gallery = gr.Gallery(label="Result", format="png", columns=4, height=360, elem_id="result")
            before_after = gr.ImageSlider(label="Before / after", type="pil", format="png")
        files = gr.File(label="Download", file_count="multiple", elem_id="downloads")
        with gr.Accordion("Status", open=False):
            status = gr.Markdown(elem_id="status")
            pull = gr.Button("Pull missing Ollama models", size="sm")

        # --- wiring ------------------------------------------------------------------------------
        refine_inputs = [state, candidate, grow]
        photo.upload(on_upload, [photo, state], [state, photo, candidate, mood, notices],
                     concurrency_limit=None).then(on_mood, [state, mood], [mood, notices], concurrency_limit=None)
        photo.clear(lambda: (_new_state(), candidate_choices(_new_state())), None, [state, candidate])
        photo.select(on_click, [state, click_label, candidate, grow],
                     [state, photo, candidate, notices], concurrency_id="sam", concurrency_limit=2)
        undo.click(on_undo, [state, grow], [state, photo, candidate], concurrency_id="sam")
        clear.click(on_clear, [state], [state, photo, candidate])
        candidate.change(on_refine, refine_inputs, [photo])
        grow.release(on_refine, refine_inputs, [photo])
        write.click(on_write_prompt, [keyword, mood], [prompt, notices], concurrency_limit=4)
        prompt.change(tokens_md, [prompt], [tokens], queue=False)
        safety.change(safety_md, [safety], [safety_info], queue=False)
        generate.click(
            on_generate,
            [state, mood, keyword, prompt, safety, concept, erased, steps, guidance, strength, seed,
             random_seed, candidates, negative, quality, scheduler, candidate, grow, feather, edit],
            [gallery, before_after, files, prompt, seed, notices, mood],
            concurrency_id="gpu", concurrency_limit=1)  # one diffusion at a time on the GPU
        cancel.click(on_cancel, None, None, queue=False)
        gallery.select(on_select_result, [state, files], [before_after])
        demo.load(on_load, None, [status, erased])
        pull.click(on_pull, None, [status], concurrency_limit=1)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Backdrop: change a photo's background in the browser.")
    parser.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0)")
    parser.add_argument("--share", action="store_true", help="also make a public Gradio link")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(overrides=vars(args))
        auth = None
        if args.auth:
            user, sep, password = args.auth.partition(":")
            if not sep or not user or not password:
                raise ValueError("--auth must be USER:PASS")
            auth = (user, password)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    demo = build_demo(settings)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=4)
    demo.launch(server_name="0.0.0.0" if args.listen else settings.host, server_port=settings.port,
                share=args.share, auth=auth, max_file_size=f"{settings.max_upload_mb}mb",
                allowed_paths=[str(settings.output_dir)], show_error=True)


if __name__ == "__main__":
    main()
