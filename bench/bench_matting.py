"""The edges: how long each edge (matte, feather, hard) takes for a real leafy subject at 1 MP and
12 MP, as a ratio to the hard cut in the same run.

A real cut-out with soft alpha (Tux Paint's holm oak, tests/real/edge_pairs.py) is scaled up over a
real photo (OpenCV's building.jpg) to the photo's size; its SAM-grade mask (the subject at a quarter
of the resolution, enlarged back) is what every edge starts from. Timed per edge: the kept layer
(`compositing.edge_layer`, the edit's default feather 4) and its composite over a plain colour,
median wall and CPU seconds (on a busy shared box the CPU seconds are the figure to
compare). Needs the real assets (python tests/real/assets.py).

    python bench/bench_matting.py [--sizes 1024x1024,4000x3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "real"))

import edge_pairs  # noqa: E402

from pipelines import settings
from pipelines.composite import compositing  # noqa: E402

SUBJECT, PHOTO = "plants/trees/holm_oak.png", "building.jpg"


def scene(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """The oak scaled to 80 % of the short side over the photo, and its SAM-grade mask."""
    cut = edge_pairs.stamp(SUBJECT)
    scale = 0.8 * min(width, height) / max(cut.size)
    cut = cut.resize((round(cut.width * scale), round(cut.height * scale)), Image.Resampling.LANCZOS)
    photo, alpha, _ = edge_pairs.paste(cut, edge_pairs.backdrop(PHOTO, (width, height)))
    return photo, edge_pairs.sam_grade(alpha)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `fn()` over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024x1024,4000x3000", help="WxH,WxH,...")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, repeats {args.repeats} (median)\n")
    print("| photo | edge | wall s | CPU s | x hard (wall) | x hard (CPU) | wall / CPU s per MP more than hard |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        photo, mask = scene(width, height)
        background = Image.new("RGB", photo.size, (40, 150, 60))
        megapixels = width * height / 1e6

        def edit(edge: str) -> None:
            layer = compositing.edge_layer(photo, mask, edge, feather=4)
            compositing.composite(photo, background, layer)

        times = {edge: timed(lambda edge=edge: edit(edge), args.repeats)
                 for edge in reversed(settings.EDGE_MODES)}
        hard_wall, hard_cpu = times["hard"]
        for edge in settings.EDGE_MODES:
            wall, cpu = times[edge]
            print(f"| {width}x{height} ({megapixels:.0f} MP) | {edge} | {wall:.2f} | {cpu:.2f} "
                  f"| {wall / hard_wall:.1f}x "
                  f"| {cpu / max(hard_cpu, 1e-3):.1f}x | {(wall - hard_wall) / megapixels:.2f} / "
                  f"{(cpu - hard_cpu) / megapixels:.2f} |")


if __name__ == "__main__":
    main()
