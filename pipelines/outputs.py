"""What an edit writes out: PNGs with the `parameters` text other SD tools read, and the JSON record.

    save_outputs(result, request, ...)  -> saved paths, never overwriting a file (`save_png`)
    format_parameters(...)              -> prompt, `Negative prompt: ...`, then `Key: value` pairs
    read_parameters(path)               -> that text parsed back into a dict
    result_record(result, request)      -> what `edit --json` prints and `/edit` returns

`editing.run_edit` calls `save_outputs`; the command line, the API and the batch call `result_record`.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from PIL import Image, PngImagePlugin

from pipelines import images
from pipelines.composite.output_check import describe_check
from pipelines.types import EditRequest, EditResult

SAMPLER_NAMES = {"euler": "Euler", "dpmpp_2m": "DPM++ 2M", "euler_trailing": "Euler (trailing)",
                 "ddim_trailing": "DDIM (trailing)", "lcm": "LCM"}


def result_record(result: EditResult, request: EditRequest) -> dict:
    """The edit as one JSON-ready record: `python -m pipelines edit --json` prints it, `/edit` returns it.

    Keys: outputs (saved paths, best first), seeds, scores, edge, background, canvas, prompt, prompt_tokens, prompt_2
    (the second encoder's text, as used), prompt_2_tokens, mood, notices, timings (seconds per stage, rounded to ms) and safety (preset, effective warm-up δ,
    the concept as used, and the check of every output, withheld ones included).
    """
    record = result.safety
    return {
        "outputs": [str(p) for p in result.paths], "seeds": result.seeds, "scores": result.scores,
        "edge": request.edge, "background": result.background, "canvas": result.canvas,
        "prompt": result.prompt, "prompt_tokens": result.prompt_tokens,
        "prompt_2": result.prompt_2, "prompt_2_tokens": result.prompt_2_tokens, "mood": result.mood, "notices": result.notices,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "safety": {"preset": record.preset, "warmup": record.warmup, "concept": record.concept,
                   "checker": record.checker,
                   "checks": [{**asdict(check), "labels": list(check.labels)}
                              for check in record.checks]},
    }


def save_outputs(result: EditResult, request: EditRequest, *, size: tuple[int, int], model: str,
                 canvas_text: str, out: Path | None, folder: Path) -> tuple[list[Path], list[str]]:
    """Save every image of `result` (best first), each with the parameters that reproduce it and the
    check it passed.

    Args:
        size: the size diffusion worked at (the canvas for a plain background).
        model: the SDXL model setting (a folder or a model id).
        canvas_text: `canvas.Frame.describe()`.
        out: a file path for the first image; further candidates get -2, -3, ... suffixes. None:
            `folder/backdrop-<time>-<seed>.png`.

    Returns:
        (the paths written, one per image; notices about files that existed and were not overwritten).
    """
    paths: list[Path] = []
    notices: list[str] = []
    for image, seed in zip(result.images, result.seeds):
        text = format_parameters(request, result, seed, size, model, canvas_text=canvas_text)
        path, renamed = save_png(image, text, out=out, folder=folder, seed=seed, index=len(paths))
        if renamed:
            notices.append(f"{renamed} exists; wrote {path} instead")
        paths.append(path)
    return paths, notices


def format_parameters(request: EditRequest, result: EditResult, seed: int, size: tuple[int, int],
                      model: str, canvas_text: str = "none") -> str:
    """The `parameters` text other SD tools read: prompt, `Negative prompt: ...`, then `Key: value` pairs.

    The safety fields come from `result.safety` (the SLD warm-up as it ran, the check of this seed's
    output). A plain background (`result.background` other than "generate") had no prompt, seed or
    model: its text has an empty prompt and only the fields that made it.
    """
    from pipelines.diffusion.safety import PRESET_LABELS

    record = result.safety
    checks = {check.seed: check for check in record.checks}
    fields: dict[str, object] = {}
    if result.background == "generate":
        safety = PRESET_LABELS[request.safety]
        if record.warmup is not None:
            safety += f" (warm-up {record.warmup} of {request.num_inference_steps} steps)"
        fields |= {
            "Steps": request.num_inference_steps,
            "Sampler": SAMPLER_NAMES[request.scheduler],
            "CFG scale": request.guidance_scale,
            "Seed": seed,
            "Size": f"{size[0]}x{size[1]}",
            "Model": Path(model).name if Path(model).exists() else model.split("/")[-1],
            "Denoising strength": request.strength,
            "Safety": safety,
            "Erased encoder": request.erased or "none",
            "Fast": request.fast or "off",
        }
    else:
        fields["Size"] = f"{size[0]}x{size[1]}"
    fields["Safety check"] = describe_check(checks.get(seed), record.checker)
    if result.background == "generate":
        fields |= {"Mood": result.mood or "none", "Prompt 2": result.prompt_2}
    fields |= {
        "Original size": f"{request.image.width}x{request.image.height}",
        "Backdrop edit": "subject" if request.edit_subject else "background",
        "Edge": request.edge,
        "Score": result.scores[result.seeds.index(seed)] if seed in result.seeds and result.scores else "none",
        "Background": result.background,
        "Canvas": canvas_text,
    }
    tail = ", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items())
    return f"{result.prompt}\nNegative prompt: {result.negative_prompt}\n{tail}"


def _quote(value: str) -> str:
    # A1111 quotes values that contain the separators; json-style escaping of quotes.
    return '"' + value.replace('"', '\\"') + '"' if ("," in value or ":" in value) else value


def read_parameters(path: str | Path) -> dict[str, str]:
    """Parse a saved PNG's `parameters` chunk back into a dict (prompt, negative prompt and each field)."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
    if text is None:
        raise ValueError(f"{path} has no Backdrop/SD parameters")
    prompt, negative, tail = text.split("\n", 2)
    out = {"Prompt": prompt, "Negative prompt": negative.removeprefix("Negative prompt: ")}
    for match in re.finditer(r'\s*([\w ]+):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)', tail):
        key, value = match.group(1).strip(), match.group(2).strip()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        out[key] = value
    return out


def save_png(image: Image.Image, parameters: str, *, out: Path | None, folder: Path, seed: int,
             index: int = 0) -> tuple[Path, Path | None]:
    """Save a PNG with its parameters (or the format `out`'s extension asks for: `images.output_format`;
    JPEG has no transparency, so an RGBA image is put on white there), never overwriting a file.

    Returns:
        (the path written, the requested path if it existed and another name was used, else None).
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    if out is not None:
        out = Path(out)
        wanted = out if index == 0 else out.with_name(f"{out.stem}-{index + 1}{out.suffix or '.png'}")
        if not wanted.suffix:
            wanted = wanted.with_suffix(".png")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        wanted = Path(folder) / f"backdrop-{stamp}-{seed}.png"
    kind, options = images.output_format(wanted)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = wanted, 1
    while True:
        try:
            # "x" mode creates the file atomically and fails if it exists: no overwrite, even racing.
            with open(candidate, "xb") as handle:
                if kind == "PNG":
                    image.save(handle, "PNG", pnginfo=info)
                else:
                    flat = image
                    if kind == "JPEG" and image.mode == "RGBA":
                        flat = Image.new("RGB", image.size, "white")
                        flat.paste(image, mask=image.getchannel("A"))
                    flat.save(handle, kind, **options)
            return candidate, (wanted if candidate != wanted else None)
        except FileExistsError:
            n += 1
            candidate = wanted.with_name(f"{wanted.stem}_{n}{wanted.suffix}")
